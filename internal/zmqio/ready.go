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
// the poller's epoll registration is; the level truth is ZMQ_EVENTS, read
// after every wake (reading it also lets libzmq process its commands).
type Readiness struct {
	sock        *zmq.Socket
	f           *os.File
	rc          syscall.RawConn
	interrupted atomic.Bool
}

var (
	// ErrInterrupted is returned by Wait after Interrupt.
	ErrInterrupted = errors.New("zmqio: wait interrupted")
	// ErrTimeout is returned by WaitTimeout when nothing came in time.
	ErrTimeout = errors.New("zmqio: wait timed out")
)

// NewReadiness registers sock's ZMQ_FD (a duplicate: the original stays
// libzmq's) with the poller. Close it before closing sock.
func NewReadiness(sock *zmq.Socket) (*Readiness, error) {
	f, rc, err := pollFD(sock)
	if err != nil {
		return nil, err
	}
	return &Readiness{sock: sock, f: f, rc: rc}, nil
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

// Wait returns when the socket has a message to receive, or with
// ErrInterrupted after Interrupt, or with the error of ZMQ_EVENTS. It must
// be called by the socket's owner (ZMQ_EVENTS touches the socket).
func (r *Readiness) Wait() error {
	if r.interrupted.Load() {
		return ErrInterrupted
	}
	return r.wait()
}

// WaitTimeout is Wait with a time limit, after which it returns ErrTimeout.
func (r *Readiness) WaitTimeout(d time.Duration) error {
	_ = r.f.SetReadDeadline(time.Now().Add(d))
	// After the deadline is set: an Interrupt that came before it (and
	// whose past deadline this one replaced) is seen here.
	if r.interrupted.Load() {
		return ErrInterrupted
	}
	err := r.wait()
	if errors.Is(err, ErrInterrupted) && !r.interrupted.Load() {
		return ErrTimeout
	}
	return err
}

func (r *Readiness) wait() error {
	var evErr error
	err := r.rc.Read(func(uintptr) bool {
		// Called after the poller reset its readiness flag: a signal
		// after this check wakes the wait that follows a false.
		ev, err := r.sock.GetEvents()
		if err != nil {
			evErr = err
			return true
		}
		return ev&zmq.POLLIN != 0
	})
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return ErrInterrupted
	}
	if err != nil {
		return err
	}
	return evErr
}

// Interrupt makes a pending and every later Wait return ErrInterrupted.
// Any goroutine may call it.
func (r *Readiness) Interrupt() {
	r.interrupted.Store(true)
	_ = r.f.SetReadDeadline(time.Unix(1, 0))
}

// Close unregisters the duplicate descriptor and closes it.
func (r *Readiness) Close() error { return r.f.Close() }
