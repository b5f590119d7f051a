package workerkit

import (
	"time"

	"github.com/zmqbridge/caddy-zmq/internal/zmqio"
)

// addressed takes a request frame addressed to this worker (REQ): the front
// end pinned its session here, so it is handled exactly as if it had come
// through the request socket (same reply socket, ACK and credit rules,
// disconnects), and it waits for a handler slot rather than being refused.
// Called by the owner, which must not wait for a slot itself: it admits the
// request (in arrival order, before any DISCONNECT that follows it) and
// queues it for runAddressed.
func (c *ctlConn) addressed(frame []byte) {
	fe := c.fe
	c.reqMu.Lock()
	closed := c.reqClosed
	c.reqMu.Unlock()
	if closed {
		fe.log.Warn("dropping a request addressed to this worker: it is stopping (REQ after BYE)")
		return
	}
	fl := fe.s.admit(fe, frame)
	if fl == nil {
		return // a notice, or nothing to run
	}
	c.reqMu.Lock()
	if c.reqClosed {
		c.reqMu.Unlock()
		fe.s.discard(fl)
		fe.log.Warn("dropping a request addressed to this worker: it is stopping (REQ after BYE)", "conn", fl.key.connID)
		return
	}
	c.reqs = append(c.reqs, fl)
	c.reqMu.Unlock()
	select {
	case c.reqWake <- struct{}{}:
	default:
	}
}

// deliverSeen is addressed for a large frame left in libzmq's memory: a
// message of one of the worker's WebSockets whose header block the socket
// has seen is delivered with it, for NextReader to read in place (as from
// the request socket, server.admitKept). It reports whether it did; if
// not, kept is still the caller's.
func (c *ctlConn) deliverSeen(frame []byte, kept *zmqio.Msg) bool {
	c.reqMu.Lock()
	closed := c.reqClosed
	c.reqMu.Unlock()
	return !closed && c.fe.s.deliverSeen(c.fe, frame, kept)
}

// nextAddressed pops the oldest addressed request; nil if none. With close
// set, an empty queue is closed for good (further REQs are dropped).
func (c *ctlConn) nextAddressed(close bool) *flight {
	c.reqMu.Lock()
	defer c.reqMu.Unlock()
	if c.reqHead == len(c.reqs) {
		c.reqs, c.reqHead = c.reqs[:0], 0
		c.reqClosed = c.reqClosed || close
		return nil
	}
	fl := c.reqs[c.reqHead]
	c.reqs[c.reqHead] = nil
	c.reqHead++
	return fl
}

// runAddressed starts the requests addressed to this worker over the control
// channel, in arrival order, each when a handler slot is free (it competes
// for slots with the request socket's owner). When the worker stops it
// serves what has arrived, and what keeps arriving (REQs the front end sent
// before it heard BYE) until drainTimeout passes without one, within
// drainMax, as the request socket's owner drains its queue; then it closes
// the queue.
func (fe *frontEndConn) runAddressed() {
	s, c := fe.s, fe.ctl
	stop := s.stop
	drainTimer := time.NewTimer(time.Hour)
	drainTimer.Stop()
	defer drainTimer.Stop()
	var drain <-chan time.Time // set while stopping: until the queue closes
	var drainEnd time.Time
	closing := false
	for {
		fl := c.nextAddressed(closing)
		if fl == nil {
			if closing {
				return
			}
			select {
			case <-c.reqWake:
				if drain != nil {
					// Still arriving: wait for silence again.
					drainTimer.Reset(min(drainTimeout, max(time.Until(drainEnd), 0)))
				}
			case <-stop:
				stop = nil
				drainEnd = time.Now().Add(drainMax)
				drainTimer.Reset(drainTimeout)
				drain = drainTimer.C
			case <-drain:
				closing = true
			}
			continue
		}
		if !fe.active.Load() && !fe.waitActive(fe.kickAddr) {
			fe.log.Warn("dropping a request addressed to this worker: its front end went away", "conn", fl.key.connID)
			s.discard(fl)
			continue
		}
		if !s.takeSlot(fl, s.base.Done()) {
			fe.log.Warn("shutdown timeout: dropping a request addressed to this worker", "conn", fl.key.connID)
			s.discard(fl)
			continue
		}
		s.start(fl)
	}
}
