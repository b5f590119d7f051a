package workerkit

import "context"

// Confirmed starts (docs/zmqx.md section 7.5). A request marked
// zmqx.HeaderConfirm is one the front end sends again, to any worker, when
// no ACK of it arrives by its dispatch deadline, and whose method does not
// tolerate a second run. An ACK handed to libzmq can still be lost: the
// control connection may break as it leaves, before the owner hears of the
// break. So such a request starts only once the front end answers its ACK
// with CONFIRM, which it does only while it holds the request as this
// worker's (never after it has given up on it: then it answers DISCONNECT,
// which cancels the request unstarted). Until then its ACK is sent again
// whenever it may have been lost: on every new control connection, and
// after a heartbeat interval without an answer (a CONFIRM the front end
// could not send). The late-ACK rule does not apply to it: the front end's
// answer, not the clock, says whether it may run.

// awaitConfirm waits, on the request's handler goroutine, until the front
// end confirms fl (true) or the request is cancelled first: DISCONNECT, a
// lapse of the lease, or the worker stopping (false; nothing is sent).
func (s *server) awaitConfirm(fl *flight, ctx context.Context) bool {
	c := fl.key.fe.ctl
	c.confirmWaiting.Add(1)
	defer c.confirmWaiting.Add(-1)
	select {
	case <-fl.confirmed:
		if ctx.Err() == nil {
			return true
		}
	case <-ctx.Done():
	}
	s.droppedUnconfirmed.Add(1)
	fl.key.fe.log.Debug("not running a request the front end did not confirm (it was sent again, or its client left)",
		"conn", fl.key.connID)
	return false
}

// confirmFlights lets the requests of k that wait for CONFIRM start.
func (s *server) confirmFlights(k flightKey) {
	s.mu.Lock()
	for f := s.inflight[k]; f != nil; f = f.next {
		if f.awaitsConfirm() {
			close(f.confirmed)
		}
	}
	s.mu.Unlock()
}

// awaitsConfirm reports whether fl waits for CONFIRM. Called under
// server.mu, under which its channel is made and closed.
func (fl *flight) awaitsConfirm() bool {
	if fl.confirmed == nil {
		return false
	}
	select {
	case <-fl.confirmed:
		return false
	default:
		return true
	}
}

// requeueUnconfirmed queues again the ACKs of fe's requests that wait for
// CONFIRM and whose ACK went out at or before sentBy (lease clock): the
// ACK, or the CONFIRM answering it, may have been lost. The owner sends
// them as it sends any queued ACK: held while no control connection is up.
func (o *ctlOwner) requeueUnconfirmed(sentBy int64) {
	c := o.c
	var again []*flight
	c.fe.s.flightsOf(c.fe, func(f *flight) {
		if f.awaitsConfirm() && f.ackSentAt <= sentBy &&
			f.ackState.CompareAndSwap(ackSent, ackQueued) {
			again = append(again, f)
		}
	})
	if len(again) == 0 {
		return
	}
	c.fe.log.Debug("control: sending unconfirmed ACKs again", "ids", len(again))
	c.ackMu.Lock()
	if !c.ackClosed {
		c.acks = append(again, c.acks...)
	}
	c.ackMu.Unlock()
}

// confirmResendAfter is how long an ACK of a request that waits for
// CONFIRM may go unanswered on a live connection before it is sent again.
const confirmResendAfter = int64(ctlHeartbeat)

// resendUnconfirmed is requeueUnconfirmed for the heartbeat: the ACKs
// unanswered for confirmResendAfter, when any request waits.
func (o *ctlOwner) resendUnconfirmed() {
	if o.c.confirmWaiting.Load() > 0 {
		o.requeueUnconfirmed(monoNow() - confirmResendAfter)
	}
}
