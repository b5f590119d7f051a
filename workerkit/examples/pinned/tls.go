package main

// The per-thread state of a native library, in its simplest form: a C
// thread-local counter. Each OS thread has its own, starting at zero, and
// it dies with the thread.

/*
static __thread long calls;

static long count_call(void) { return ++calls; }
*/
import "C"

// countCall adds one to the calling thread's counter and returns it. The
// caller must be locked to its thread (as pinned session handlers are) for
// two calls to see the same counter.
func countCall() int64 { return int64(C.count_call()) }
