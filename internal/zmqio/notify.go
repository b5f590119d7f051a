package zmqio

import (
	"os"
	"syscall"
	"time"

	zmq "github.com/pebbe/zmq4"
)

// Notifier tells a socket's owner over a channel that the socket's ZMQ_FD
// signalled, so that the owner can wait in a select for the socket and for
// Go channels at once, with no goroutine blocked in libzmq (a goroutine in
// a long cgo call holds its P until sysmon takes it back, which costs
// thread hand-offs on every message).
//
// A signal means "look": the owner then receives with DONTWAIT until
// EAGAIN. It must also do that after each of its own operations on the
// socket before it waits again, whatever woke it: a send may process the
// command that would have signalled. Reading ZMQ_EVENTS or receiving is
// what lets libzmq reset the descriptor, so an owner that looks every time
// it is told misses nothing: every later command signals anew.
type Notifier struct {
	f    *os.File
	rc   syscall.RawConn
	c    chan struct{}
	done chan struct{}
}

// NewNotifier starts watching sock's ZMQ_FD. The watcher never touches the
// socket itself. Close it before closing sock.
func NewNotifier(sock *zmq.Socket) (*Notifier, error) {
	f, rc, err := pollFD(sock)
	if err != nil {
		return nil, err
	}
	n := &Notifier{f: f, rc: rc, c: make(chan struct{}, 1), done: make(chan struct{})}
	go n.watch()
	return n, nil
}

// C receives a value after each signal (at most one is pending), and one
// at the start.
func (n *Notifier) C() <-chan struct{} { return n.c }

func (n *Notifier) watch() {
	defer close(n.done)
	// One RawRead for the whole life: it resets the poller's readiness
	// once, at its start; from then on an edge either wakes the wait or is
	// kept for the next one, so none is lost between two waits.
	_ = n.rc.Read(func(uintptr) bool {
		select {
		case n.c <- struct{}{}:
		default:
		}
		return false
	})
}

// Close stops the watcher and closes the duplicate descriptor.
func (n *Notifier) Close() error {
	_ = n.f.SetReadDeadline(time.Unix(1, 0))
	<-n.done
	return n.f.Close()
}
