package zmqio

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	zmq "github.com/pebbe/zmq4"
)

// Readiness waits, in Go's network poller, for a socket to have a message
// to receive. libzmq signals through ZMQ_FD, edge-triggered, which is what
// the poller's epoll registration is; the level truth is what a receive
// finds, so the owner's own ZMQ_DONTWAIT receive is the check (Await).
type Readiness struct {
	f           *os.File
	rc          syscall.RawConn
	interrupted atomic.Bool
	// try is the current Await's; read is built once, so that a wait
	// allocates no closure.
	try  func() bool
	read func(uintptr) bool
	// deadline is the poller's read deadline that AwaitTimeout set last.
	deadline time.Time
}

var (
	// ErrInterrupted is returned by Await after Interrupt.
	ErrInterrupted = errors.New("zmqio: wait interrupted")
	// ErrTimeout is returned by AwaitTimeout when nothing came in time.
	ErrTimeout = errors.New("zmqio: wait timed out")
)

// NewReadiness registers sock's ZMQ_FD (a duplicate: the original stays
// libzmq's) with the poller. Close it before closing sock.
func NewReadiness(sock *zmq.Socket) (*Readiness, error) {
	f, rc, err := pollFD(sock)
	if err != nil {
		return nil, err
	}
	r := &Readiness{f: f, rc: rc}
	r.read = func(uintptr) bool { return r.try() }
	return r, nil
}

// pollFD registers a duplicate of sock's ZMQ_FD (the original stays
// libzmq's) with Go's network poller.
func pollFD(sock *zmq.Socket) (*os.File, syscall.RawConn, error) {
	fd, err := sock.GetFd()
	if err != nil {
		return nil, nil, fmt.Errorf("zmqio: ZMQ_FD: %w", err)
	}
	dup, err := syscall.Dup(fd)
	if err != nil {
		return nil, nil, fmt.Errorf("zmqio: dup ZMQ_FD: %w", err)
	}
	syscall.CloseOnExec(dup)
	if err := syscall.SetNonblock(dup, true); err != nil {
		_ = syscall.Close(dup)
		return nil, nil, fmt.Errorf("zmqio: ZMQ_FD non-blocking: %w", err)
	}
	f := os.NewFile(uintptr(dup), "zmq-fd")
	rc, err := f.SyscallConn()
	if err != nil {
		_ = f.Close()
		return nil, nil, fmt.Errorf("zmqio: ZMQ_FD: %w", err)
	}
	return f, rc, nil
}

// Await calls try until it reports true, parking in the poller between
// calls until the socket signals. It returns ErrInterrupted after
// Interrupt. It must be called by the socket's owner, and try must be a
// ZMQ_DONTWAIT receive (or anything else that, when it finds nothing, has
// let libzmq process its commands, as such a receive does on EAGAIN). try
// should be made once, not per call: a new closure each time allocates.
//
// The receive is the readiness check itself. The poller's flag is reset
// before the first try, so a signal that comes after a try found nothing
// wakes the park that follows. Receiving first and then waiting on
// ZMQ_EVENTS, as the zmq_getsockopt(3) recipe goes, costs a cgo call and,
// inside libzmq, a poll(2) of its mailbox on each side of every park: on a
// request/reply path that parks once per message, that is paid for every
// message.
func (r *Readiness) Await(try func() bool) error {
	if r.interrupted.Load() {
		return ErrInterrupted
	}
	r.try = try
	err := r.rc.Read(r.read)
	r.try = nil
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return ErrInterrupted
	}
	return err
}

// AwaitTimeout is Await with a time limit, after which it returns
// ErrTimeout. The limit is between d/2 and d: the poller's deadline (a
// timer) is moved only once less than half of d is left, not on every
// call, since most calls under load find a message at once.
func (r *Readiness) AwaitTimeout(d time.Duration, try func() bool) error {
	if now := time.Now(); r.deadline.Sub(now) < d/2 {
		r.deadline = now.Add(d)
		_ = r.f.SetReadDeadline(r.deadline)
	}
	// After the deadline is set: an Interrupt that came before it (and
	// whose past deadline this one replaced) is seen here. One that came
	// after it left its past deadline in place, which ends the wait.
	err := r.Await(try)
	if errors.Is(err, ErrInterrupted) && !r.interrupted.Load() {
		return ErrTimeout
	}
	return err
}

// Interrupt makes a pending and every later Await return ErrInterrupted.
// Any goroutine may call it.
func (r *Readiness) Interrupt() {
	r.interrupted.Store(true)
	_ = r.f.SetReadDeadline(time.Unix(1, 0))
}

// Close unregisters the duplicate descriptor and closes it.
func (r *Readiness) Close() error { return r.f.Close() }
