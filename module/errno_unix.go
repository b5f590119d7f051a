package caddyzmq

import "syscall"

const syscallEAGAIN = syscall.EAGAIN
