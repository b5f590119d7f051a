package workerkit

import (
	"fmt"
	"time"

	zmq "github.com/pebbe/zmq4"
)

// runRequests owns the front end's request socket (PULL connected to the
// front end's PUSH).
func (fe *frontEndConn) runRequests(ready chan<- error) {
	s := fe.s
	sock, err := s.zctx.NewSocket(zmq.PULL)
	if err == nil {
		err = firstErr(
			sock.SetLinger(0),
			// A small queue: what sits here cannot go to an idle worker.
			sock.SetRcvhwm(s.rcvHWM),
			sock.SetRcvtimeo(recvTimeout),
			sock.SetHeartbeatIvl(heartbeatIvl),
			sock.SetHeartbeatTimeout(heartbeatTimeout),
			fe.secure(sock),
		)
	}
	var gate *bindGate
	if err == nil && fe.cfg.Bind {
		gate, err = fe.bindRequests(sock)
	}
	if err != nil {
		err = fmt.Errorf("workerkit: request socket for %s: %w", fe.cfg.Requests, err)
	}
	ready <- err
	if err != nil {
		if sock != nil {
			_ = sock.Close()
		}
		return
	}
	fe.receive(sock, gate)
}

// closeRequests closes the request socket once its loop has ended, and
// serves held, what the loop took before cutting the flow.
func (fe *frontEndConn) closeRequests(sock *zmq.Socket, gate *bindGate, held []*flight) {
	s := fe.s
	if gate != nil {
		gate.close(sock)
	}
	if err := sock.Close(); err != nil {
		fe.log.Warn("closing request socket", "err", err)
	}
	for i, fl := range held {
		if !s.takeSlot(fl, s.base.Done()) {
			fe.log.Warn("shutdown timeout: dropping queued requests", "count", len(held)-i)
			for _, fl := range held[i:] {
				s.discard(fl)
			}
			return
		}
		s.start(fl)
	}
	if len(held) > 0 {
		fe.log.Info("served requests that were queued locally at shutdown", "count", len(held))
	}
}

// receive is the request socket's working life: it returns when the worker
// stops, once the socket is closed and the requests queued locally then
// are started. gate is set in bind mode, where the socket is already bound.
// The loop runs on goroutines of its own (inline.go): this one only waits
// for it, so that Serve's wait for request owners never waits for a
// handler that runs inline.
func (fe *frontEndConn) receive(sock *zmq.Socket, gate *bindGate) {
	in, err := newSocketReader(sock)
	if err != nil {
		fe.s.fatal(fmt.Errorf("workerkit: request socket for %s: %w", fe.cfg.Requests, err))
		fe.closeRequests(sock, gate, nil)
		return
	}
	newReqLoop(fe, sock, gate, in).runLoop()
}

// lead runs the receive loop as its leader. It returns true when the loop
// has ended, false when this goroutine lost the loop to another while it ran
// a request inline.
func (l *reqLoop) lead() bool {
	fe, s, sock, gate := l.fe, l.fe.s, l.sock, l.gate
	var held []*flight // admitted as the worker stopped
	wait := func() bool { return fe.waitActive(fe.kick) }
	if gate != nil {
		wait = func() bool { return fe.waitBound(gate) }
	}
	for wait() {
		if !l.connected {
			// Only now: a request taken before the front end subscribed
			// would be answered into the void (slow joiner). And, with a
			// control channel, preferably once it is up, or the first
			// requests could not be acknowledged (they would be served
			// without flow control).
			if fe.ctl != nil && !fe.ctl.waitUp(s.stop, ctlStartWait) {
				fe.log.Warn("control channel not connected yet; taking work without it", "control", fe.cfg.Control)
			}
			if err := sock.Connect(fe.cfg.Requests); err != nil {
				s.fatal(fmt.Errorf("workerkit: connecting to %s: %w", fe.cfg.Requests, err))
				l.end(nil)
				return true
			}
			l.connected = true
		}
		if fe.greeting() {
			// A new control connection the front end has not answered yet
			// (it may not read it): a request taken now could not be
			// acknowledged in time, and the front end would send it again.
			// Leave it in the queue until the connection is up.
			fe.waitGreeting()
			continue
		}
		// Receive first, then wait for a handler slot. An idle owner holds
		// no slot, so requests addressed to this worker over the control
		// channel (REQ) find one free; and a disconnect notice is read,
		// and cancels its request, even while every slot is busy. While
		// all slots are busy one request waits here and the rest in the
		// socket's queue: either way they were routed to this worker.
		msg, kept, err := l.in.recv(recvTimeout)
		if err != nil {
			if !isEAGAIN(err) {
				fe.log.Error("receiving request", "err", err)
			}
			continue
		}
		if gate != nil {
			// A front end may have connected just now, its request come in
			// before its subscription: wait for it (or for the grace).
			if !fe.waitBound(gate) && !fe.active.Load() {
				fe.log.Warn("dropping a request that arrived as its front end went away")
				kept.Close()
				break
			}
		} else if !fe.active.Load() && !fe.waitActive(fe.kick) {
			// The front end went away while we were receiving, and we are
			// stopping before it came back: nobody can take the answer.
			fe.log.Warn("dropping a request that arrived as its front end went away")
			kept.Close()
			break
		}
		var fl *flight
		if kept != nil {
			fl = s.admitKept(fe, kept)
		} else {
			fl = s.admit(fe, msg)
		}
		if fl == nil {
			continue // a notice, or nothing to run
		}
		// Received just as a new control connection began: it starts once
		// the connection is up (or gone), like the ones left in the queue.
		for fe.greeting() && fe.waitGreeting() {
		}
		if fe.paused.Load() {
			fe.ctl.nack(fl) // the front end sends it to another worker
			continue
		}
		switch s.takeSlotUnlessPaused(fl) {
		case slotTaken:
			if !l.serve(fl) {
				return false
			}
		case slotPaused:
			fe.ctl.nack(fl)
		case slotStopped:
			held = append(held, fl) // served below, with what is queued
		}
	}
	l.end(l.drain(held))
	return true
}

// end ends the loop: it closes the socket and serves held.
func (l *reqLoop) end(held []*flight) {
	l.in.close()
	l.fe.closeRequests(l.sock, l.gate, held)
	close(l.done)
}

// drain takes, at shutdown, what has already arrived in the socket, and
// leaves the front end: it returns the requests to serve before closing.
func (l *reqLoop) drain(held []*flight) []*flight {
	fe, s, sock, gate := l.fe, l.fe.s, l.sock, l.gate
	if !l.connected || !fe.active.Load() {
		// Nothing queued, or nobody to answer.
		for _, fl := range held {
			s.discard(fl)
		}
		return nil
	}
	// zmq_disconnect (and close) drop what is still queued in the socket, so
	// first take what has already arrived, without waiting on handler
	// slots; more keeps arriving while we read, hence the bounds.
	if err := sock.SetRcvtimeo(drainTimeout); err != nil {
		fe.log.Warn("setting drain timeout", "err", err)
	}
	limit := time.Now().Add(drainMax)
	for len(held) < 4*s.rcvHWM && time.Now().Before(limit) {
		msg, err := sock.RecvBytes(0)
		if err != nil {
			break
		}
		if fl := s.admit(fe, msg); fl != nil {
			held = append(held, fl)
		}
	}
	if gate != nil {
		// Stop accepting (and drop the front ends' connections) while we
		// serve what we hold: their PUSH sockets send elsewhere meanwhile.
		fe.log.Debug("unbinding request socket", "held", len(held))
		if err := sock.Unbind(gate.endpoint); err != nil {
			fe.log.Warn("unbinding request socket", "err", err)
		}
		return held
	}
	fe.log.Debug("disconnecting request socket", "held", len(held))
	if err := sock.Disconnect(fe.cfg.Requests); err != nil {
		fe.log.Warn("disconnecting request socket", "err", err)
	}
	return held
}

// greeting reports whether the front end's control connection waits for
// its answer to HELLO (ctlConn.greeting).
func (fe *frontEndConn) greeting() bool { return fe.ctl != nil && fe.ctl.greeting.Load() }

// waitGreeting waits, at most recvTimeout, for the control connection to
// come up or go; the control owner kicks it when it does.
// It reports false once the worker is stopping.
func (fe *frontEndConn) waitGreeting() bool {
	t := time.NewTimer(recvTimeout)
	defer t.Stop()
	select {
	case <-fe.kick:
	case <-fe.s.stop:
		return false
	case <-t.C:
	}
	return true
}

// wakeOwner wakes the request socket's owner when its pause or its
// control connection changes.
func (fe *frontEndConn) wakeOwner() {
	select {
	case fe.kick <- struct{}{}:
	default:
	}
}

// waitActive blocks until the front end is subscribed; false means stop.
// kick is the caller's wake-up channel (each waiter has its own).
func (fe *frontEndConn) waitActive(kick <-chan struct{}) bool {
	for {
		select {
		case <-fe.s.stop:
			return false
		default:
		}
		if fe.active.Load() {
			return true
		}
		select {
		case <-kick:
		case <-fe.s.stop:
			return false
		}
	}
}

const (
	// recvTimeout bounds how long a request socket's owner sits in a
	// blocking receive before it looks at shutdown and pause state again.
	recvTimeout = 50 * time.Millisecond
	// drainTimeout is the silence that means "the local request queue is
	// empty" at shutdown; drainMax bounds the whole drain, as a busy front
	// end keeps refilling the queue until we disconnect.
	drainTimeout = 10 * time.Millisecond
	drainMax     = 100 * time.Millisecond
)
