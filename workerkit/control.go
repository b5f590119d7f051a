package workerkit

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

// The control channel, protocol extension zmqx/1 (package internal/zmqx,
// docs/zmqx.md): one DEALER per front end, connected to the front end's
// ROUTER, with the worker id as its identity. Every message is one frame of
// text.

const (
	// ctlHeartbeat is how often a worker says HB; the front end declares it
	// dead after zmqx.LivenessBound of silence.
	ctlHeartbeat = zmqx.HeartbeatInterval
	// ctlCloseLinger lets BYE and the last messages leave at shutdown.
	ctlCloseLinger = 200 * time.Millisecond
	// ctlStartWait is how long a fresh worker waits for the control
	// connection to come up (WELCOME) before it connects to the front
	// end's request socket without it.
	ctlStartWait = time.Second
	// welcomeWait is how long a HELLO may go unanswered before the front
	// end is taken for one that predates WELCOME (the connection then
	// counts as up at HELLO, as it did before WELCOME).
	welcomeWait = zmqx.WelcomeWait
	// maxGrant bounds one CREDIT, so that nonsense cannot overflow.
	maxGrant = 1 << 40
	// maxAckIDs bounds the connection ids one ACK message carries.
	maxAckIDs = 128
)

// ctlSeq numbers the inproc endpoints of control owners (one libzmq context
// per Serve, but tests run several workers in a process).
var ctlSeq atomic.Uint64

// ctlConn is the control channel of one front end. Its sockets belong to
// the goroutine running run; other goroutines talk to it through the queues
// below and the wake channel.
type ctlConn struct {
	fe   *frontEndConn
	wake chan struct{} // something is queued: wake the owner
	dead chan struct{} // closed when the owner is gone
	up   chan struct{} // closed when the control connection first comes up

	// connected: the front end has answered HELLO on the current
	// connection (WELCOME, or any message), so what we send on it is heard
	// and an ACK can go out. Written by the owner, read when a request
	// starts.
	connected atomic.Bool
	// greeting: HELLO went out on a new connection and the front end has
	// not answered yet. libzmq may have refused the connection (with CURVE
	// a front end reads no second connection under a worker id while the
	// old one lingers there), so nothing sent on it may be heard: ACKs are
	// held, and no request is taken from the front end's request socket,
	// as none could be acknowledged.
	greeting      atomic.Bool
	warnedUnacked atomic.Bool // logged once per outage
	// confirmWaiting counts handlers waiting for CONFIRM (confirm.go).
	confirmWaiting atomic.Int32
	// lastSend is when the owner last sent a message (monoNow), 0 when
	// there is no lease to keep (lease.go).
	lastSend atomic.Int64

	ackMu     sync.Mutex
	acks      []*flight // ACKs to send, in the order the requests started
	grants    []ugrant  // UCREDITs to send (upload credit), in order
	nacks     []string  // connection ids to hand back (NACK), paused
	ackClosed bool      // the owner is gone

	// Requests addressed to this worker (REQ), admitted by the owner, in
	// arrival order, waiting for runAddressed to give them a handler slot.
	reqMu     sync.Mutex
	reqs      []*flight // reqs[reqHead:] are waiting
	reqHead   int
	reqClosed bool          // runAddressed is gone: drop further REQs
	reqWake   chan struct{} // capacity 1: reqs is not empty
}

// ugrant is one UCREDIT to send.
type ugrant struct {
	connID string
	n      int64
}

func newCtlConn(fe *frontEndConn) *ctlConn {
	return &ctlConn{
		fe:      fe,
		wake:    make(chan struct{}, 1),
		dead:    make(chan struct{}),
		up:      make(chan struct{}),
		reqWake: make(chan struct{}, 1),
	}
}

// ack queues the ACK of a request that starts now. The caller does not wait
// for it: the ACK leaves within microseconds (the owner never blocks), and
// waiting would buy nothing. An ACK handed to libzmq is not delivered yet
// either, and the reply travels on another socket, so the front end sees
// ACK and reply in either order anyway (it accepts both). What the writer
// needs to know, whether credit will come, is settled without waiting: the
// flow is lifted if the ACK cannot be sent.
//
// The owner sends everything queued when it wakes as one message, so ACKs
// of requests that start together are coalesced without any timer: a lone
// ACK is never delayed.
func (c *ctlConn) ack(fl *flight) {
	c.ackMu.Lock()
	if c.ackClosed {
		c.ackMu.Unlock()
		fl.ackState.Store(ackNone)
		fl.unacked()
		return
	}
	c.acks = append(c.acks, fl)
	first := len(c.acks) == 1
	c.ackMu.Unlock()
	if first {
		// Later ones ride on this wake-up: the owner takes the whole queue.
		c.poke()
	}
}

// grantUpload queues UCREDIT <connID> <n>: the handler read n more bytes
// of its streamed body. Like ack, it does not wait.
func (c *ctlConn) grantUpload(connID string, n int64) {
	c.ackMu.Lock()
	if c.ackClosed {
		c.ackMu.Unlock()
		return
	}
	c.grants = append(c.grants, ugrant{connID, n})
	c.ackMu.Unlock()
	c.poke()
}

// nack hands an admitted, unstarted request back to the front end: we are
// paused. Without a control connection it is simply dropped, and the front
// end re-sends it at its dispatch deadline.
func (c *ctlConn) nack(fl *flight) {
	c.fe.s.discard(fl)
	c.ackMu.Lock()
	if !c.ackClosed {
		c.nacks = append(c.nacks, fl.key.connID)
	}
	c.ackMu.Unlock()
	c.poke()
}

func (c *ctlConn) poke() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// warnUnacked logs, once per control outage, that requests with a dispatch
// deadline are being dropped for want of an ACK.
func (c *ctlConn) warnUnacked() {
	if !c.warnedUnacked.Swap(true) {
		c.fe.log.Warn("control channel down: dropping requests with a dispatch deadline, which cannot be acknowledged (the front end re-sends them)",
			"control", c.fe.cfg.Control)
	}
}

// waitUp waits for the control connection to come up the first time
// (WELCOME), at most d; false means it did not (or the worker is
// stopping).
func (c *ctlConn) waitUp(stop <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-c.up:
		return true
	case <-stop:
		return false
	case <-t.C:
		return false
	}
}
