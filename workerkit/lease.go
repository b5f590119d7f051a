package workerkit

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

// The liveness lease: what keeps a request from running twice when this
// worker stops for a while (SIGSTOP, a VM pause, starvation) and then goes
// on as if nothing happened.
//
// A front end declares a worker lost after frontEndDeadAfter without a
// control message from it, and fails (retries, for idempotent methods) the
// requests it acknowledged. It re-sends a request nobody acknowledged by its
// dispatch deadline plus frontEndAckGrace. A worker that resumes past either
// moment must not carry on with those requests: their side effects would
// happen twice. So:
//
//   - the control owner notes when it last sent anything; silent for
//     leaseLapse (any send renews it; HB goes out every ctlHeartbeat), the worker
//     cancels every request it acknowledged to that front end, skips the
//     ACKs still queued, and says RESET, so that the front end fails those
//     requests at once if it has not yet;
//   - an ACK that would leave later than its request's deadline plus
//     lateAckGrace is not sent: the request is cancelled instead, and the
//     front end re-sends it, safely;
//   - a request's context reports both conditions in Err() itself, so that
//     a handler that resumes before the control owner does (both wake at
//     once after SIGCONT) and checks r.Context().Err() before its side
//     effect sees it cancelled.
//
// Margins are measured on this worker's monotonic clock against times the
// front end measures from receipt, which can only be later; the deadline
// compares wall clocks, like the dispatch deadline itself.
const (
	frontEndDeadAfter = zmqx.LivenessBound
	frontEndAckGrace  = zmqx.DispatchGrace
	leaseLapse        = 800 * time.Millisecond
	lateAckGrace      = frontEndAckGrace / 2
)

// monoBase anchors the monotonic timestamps kept in atomics.
var monoBase = time.Now()

// testClockJump, set by tests, moves the lease clock forward, as a SIGSTOP
// of that length would.
var testClockJump atomic.Int64

func monoNow() int64 { return int64(time.Since(monoBase)) + testClockJump.Load() }

// ACK states of a flight.
const (
	ackNone    int32 = iota // not acknowledged (no control channel, or a notice)
	ackQueued               // its ACK waits in the control owner's queue
	ackSent                 // its ACK is being or was handed to libzmq
	ackDropped              // its ACK will not be sent; the flight is cancelled
)

// noteSent renews the lease as of at, the lease clock read before the
// send: a freeze between the send and this call must not count as time
// the front end heard from us (it heard nothing meanwhile).
func (c *ctlConn) noteSent(at int64) { c.lastSend.Store(at) }

// lapsed reports whether the control connection has been silent past the
// lease, which the front end may have taken for this worker's death.
func (c *ctlConn) lapsed() bool { return c.lapsedAt(monoNow()) }

// lapsedAt is lapsed as of now, a reading of the lease clock.
func (c *ctlConn) lapsedAt(now int64) bool {
	last := c.lastSend.Load()
	return last != 0 && now-last > int64(leaseLapse)
}

// checkLease is run by the control owner before it sends anything.
//
// Sends themselves refuse while the lease is lapsed, so that a freeze
// between this check and a send cannot renew the lease unnoticed (the send
// would renew it with its requests still running): the owner then runs
// checkLease again, which cancels first and renews by saying RESET.
func (o *ctlOwner) checkLease() {
	c := o.c
	if !c.lapsed() {
		return
	}
	silent := time.Duration(monoNow() - c.lastSend.Load())
	// Cancel first, renew after: a handler that reads the renewed lease
	// (flightCtx.Err) then finds its flight cancelled already.
	n := c.fe.s.cancelAcked(c.fe)
	c.lastSend.Store(0)
	c.fe.log.Warn("control: silent past the liveness lease (frozen or starved); cancelled the requests acknowledged to this front end",
		"control", c.fe.cfg.Control, "silent", silent.Round(time.Millisecond), "cancelled", n)
	if c.connected.Load() {
		o.drainAcks() // skips the cancelled ones
		o.send(zmqx.AppendReset(o.buf[:0]))
		return
	}
	// The front end may not have declared us lost yet: say it when a
	// connection comes up.
	o.resetDue = true
}

// cancelAcked cancels the requests of fe that were acknowledged (or were
// about to be), and reports how many.
func (s *server) cancelAcked(fe *frontEndConn) int {
	n := 0
	s.flightsOf(fe, func(f *flight) {
		if f.ackState.CompareAndSwap(ackQueued, ackDropped) || f.ackState.Load() == ackSent {
			f.cancel()
			n++
		}
	})
	return n
}

// ackTooLate reports whether fl's ACK, sent now, could reach the front end
// after it re-sent the request.
func (fl *flight) ackTooLate() bool {
	return fl.deadline != 0 && time.Now().UnixMicro() > fl.deadline*1000+lateAckGrace.Microseconds()
}

// flightCtx is a request's context: Err also applies the lease (see above),
// so that it is right even before the control owner has run.
type flightCtx struct {
	context.Context
	fl *flight
}

func (c *flightCtx) Err() error {
	fl := c.fl
	if st := fl.ackState.Load(); st != ackNone {
		ctl := fl.key.fe.ctl
		// The lease first: the owner cancels before it renews.
		if ctl.lapsed() {
			fl.cancel()
		} else if st == ackQueued && fl.confirmed == nil && fl.ackTooLate() && fl.ackState.CompareAndSwap(ackQueued, ackDropped) {
			fl.cancel()
		}
	}
	return c.Context.Err()
}

var _ context.Context = (*flightCtx)(nil)
