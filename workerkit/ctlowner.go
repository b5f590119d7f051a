package workerkit

import (
	"bytes"
	"fmt"
	"io"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/zmqbridge/caddy-zmq/internal/zmqio"
	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

// ctlOwner is the state of the goroutine that owns the DEALER.
type ctlOwner struct {
	c         *ctlConn
	sock      *zmq.Socket
	needHello bool // a new connection has not heard HELLO yet
	bye       bool // the worker is draining: say BYE after every HELLO
	upClosed  bool
	batch     []*flight // ACKs being sent; swapped with ctlConn.acks
	grants    []ugrant  // UCREDITs being sent; swapped with ctlConn.grants
	buf       []byte    // ACK message being built
	greeting  []byte    // HELLO or BYE being built: hello runs while buf is being sent
	rcv       *zmqio.Receiver
	rbuf      *[]byte // the next message is received into it (ctlBufs)

	// While greeting (ctlConn.greeting): when the last message went out on
	// the new connection (lease clock; it renews the lease once the front
	// end answers), and when to stop waiting for its answer.
	greetSent int64
	welcomeBy time.Time
	// legacy: the front end did not answer a HELLO within welcomeWait, so
	// it predates WELCOME: its connections count as up at HELLO.
	legacy bool
	// resetDue: the lease lapsed while no connection was up; RESET goes
	// out first when one comes up.
	resetDue bool
	// flushDue: the connection just came up (flushUp).
	flushDue bool
}

// run owns the DEALER and its monitor.
func (c *ctlConn) run(ready chan<- error, quit <-chan struct{}) {
	defer close(c.dead)
	fe := c.fe
	s := fe.s
	seq := ctlSeq.Add(1)
	monEP := fmt.Sprintf("inproc://workerkit-ctl-monitor-%d", seq)

	var dealer, mon *zmq.Socket
	closeAll := func() {
		for _, sock := range []*zmq.Socket{mon, dealer} {
			if sock != nil {
				_ = sock.Close()
			}
		}
	}
	newSock := func(t zmq.Type) *zmq.Socket {
		sock, err := s.zctx.NewSocket(t)
		if err != nil {
			return nil
		}
		if sock.SetLinger(0) != nil {
			_ = sock.Close()
			return nil
		}
		return sock
	}
	var err error
	if dealer = newSock(zmq.DEALER); dealer == nil {
		err = fmt.Errorf("cannot create socket")
	}
	if err == nil {
		err = firstErr(
			dealer.SetIdentity(s.id),
			// Only to completed connections: an ACK queued while the front
			// end is away would reach its next incarnation, which reuses
			// connection ids. A failed send means "no control connection".
			dealer.SetImmediate(true),
			dealer.SetHeartbeatIvl(heartbeatIvl),
			dealer.SetHeartbeatTimeout(heartbeatTimeout),
			fe.secure(dealer),
			dealer.Monitor(monEP, zmq.EVENT_HANDSHAKE_SUCCEEDED|zmq.EVENT_DISCONNECTED),
		)
	}
	if err == nil {
		if mon = newSock(zmq.PAIR); mon == nil {
			err = fmt.Errorf("cannot create monitor socket")
		} else {
			err = mon.Connect(monEP)
		}
	}
	var rcv *zmqio.Receiver
	if err == nil {
		rcv, err = zmqio.NewReceiver(dealer)
	}
	if err == nil {
		err = dealer.Connect(fe.cfg.Control)
	}
	if err != nil {
		err = fmt.Errorf("workerkit: control socket for %s: %w", fe.cfg.Control, err)
		if rcv != nil {
			rcv.Close()
		}
		closeAll()
		ready <- err
		return
	}
	ready <- nil

	o := &ctlOwner{c: c, sock: dealer, rcv: rcv}
	// The owner waits in one select for Go-side events (c.wake), for both
	// sockets (zmqio.Notifier: no goroutine sits in libzmq) and for the
	// heartbeat; after any wake it looks at both sockets, which is what the
	// notifiers need (a send of ours may take a socket's signal).
	dealerN, err := zmqio.NewNotifier(dealer)
	var monN *zmqio.Notifier
	if err == nil {
		if monN, err = zmqio.NewNotifier(mon); err != nil {
			_ = dealerN.Close()
		}
	}
	if err != nil {
		fe.log.Error("control: cannot watch the control socket; running without control channel", "err", err)
		rcv.Close()
		closeAll()
		<-quit
		return
	}
	hb := time.NewTimer(ctlHeartbeat)
	defer hb.Stop()
	stop := s.stop
	nextHB := time.Now().Add(ctlHeartbeat)
	for {
		select {
		case <-quit:
			o.drainAcks()
			c.ackMu.Lock()
			c.ackClosed = true
			c.ackMu.Unlock()
			_ = dealer.Monitor("", 0)
			_ = dealer.SetLinger(ctlCloseLinger)
			_ = dealerN.Close()
			_ = monN.Close()
			rcv.Close()
			if o.rbuf != nil {
				ctlBufs.Put(o.rbuf)
			}
			closeAll()
			return
		default:
		}
		if stop != nil {
			select {
			case <-stop:
				stop = nil
				o.bye = true
				o.send(zmqx.AppendBye(o.buf[:0]))
				fe.log.Debug("control: said BYE")
			default:
			}
		}
		o.checkLease()
		o.drainAcks()
		if now := time.Now(); !now.Before(nextHB) {
			o.send(zmqx.AppendHeartbeat(o.buf[:0]))
			nextHB = now.Add(ctlHeartbeat)
			o.resendUnconfirmed() // confirm.go
		}
		// Sends refuse while the lease is lapsed (a freeze may fall
		// between the check above and a send): notice it now, not after
		// the next wait.
		o.checkLease()
		o.monitor(mon)
		if o.c.greeting.Load() && time.Now().After(o.welcomeBy) {
			o.fallBack()
		}
		if o.needHello {
			// Writable once the new pipe is attached.
			if ev, err := dealer.GetEvents(); err == nil && ev&zmq.POLLOUT != 0 {
				o.hello()
			}
		}
		o.receive()
		o.flushUp()
		hb.Reset(max(time.Until(nextHB), 0)) // Go 1.23 timers: no stale tick to drain
		select {
		case <-c.wake:
		case <-stop:
		case <-quit:
		case <-dealerN.C():
		case <-monN.C():
		case <-hb.C:
		}
	}
}

// send sends one control message; false if there is no control connection
// (or its queue is full), which is never worth waiting for.
func (o *ctlOwner) send(msg []byte) bool {
	at := monoNow()
	if o.c.lapsedAt(at) {
		return false // checkLease must run first (lease.go)
	}
	if o.needHello {
		o.hello()
	}
	_, err := o.sock.SendBytes(msg, zmq.DONTWAIT)
	if err != nil && !isEAGAIN(err) {
		o.c.fe.log.Warn("control: send", "msg", printable(msg, 100), "err", err)
	}
	if err == nil {
		o.noteSent(at)
	}
	return err == nil
}

// noteSent renews the lease with a send made at at; a send on a connection
// the front end has not answered yet renews it only once it answers.
func (o *ctlOwner) noteSent(at int64) {
	if o.c.greeting.Load() {
		o.greetSent = at
		return
	}
	o.c.noteSent(at)
}

// hello greets a new connection: first after every handshake, before any
// other message on it. The connection comes up when the front end answers
// (up).
func (o *ctlOwner) hello() {
	at := monoNow()
	if o.c.lapsedAt(at) {
		return // checkLease first; the owner polls for POLLOUT again
	}
	o.greeting = zmqx.AppendHello(o.greeting[:0], o.c.fe.s.maxConc)
	// Greeting from before the HELLO leaves: a request that starts once
	// the front end could have seen it must hold its ACK.
	o.c.greeting.Store(true)
	if _, err := o.sock.SendBytes(o.greeting, zmq.DONTWAIT); err != nil {
		o.c.greeting.Store(false)
		return // pipe not attached yet: poll for POLLOUT and retry
	}
	o.needHello = false
	o.greetSent, o.welcomeBy = at, time.Now().Add(welcomeWait)
	// A new connection starts unpaused: a front end that still finds us
	// hung says PAUSE again.
	o.c.fe.paused.Store(false)
	if o.bye {
		o.greeting = zmqx.AppendBye(o.greeting[:0])
		if _, err := o.sock.SendBytes(o.greeting, zmq.DONTWAIT); err == nil {
			o.greetSent = monoNow()
		}
	}
	if o.legacy {
		o.up()
	}
}

// up counts the connection as up: the front end has answered our HELLO on
// it (or, legacy, does not answer HELLOs at all). What we sent on it was
// heard, so it renews the lease; the ACKs held meanwhile go out now
// (drainAcks), and the request socket is read again.
func (o *ctlOwner) up() {
	c := o.c
	// A lapse while the connection was not up cancels first (checkLease);
	// only then do the sends on it renew the lease.
	o.checkLease()
	c.greeting.Store(false)
	c.noteSent(o.greetSent)
	c.connected.Store(true)
	c.warnedUnacked.Store(false)
	// The RESET due and the ACKs held go out before the owner waits again
	// (flushUp), not from here: up may run inside a send, whose message
	// is in o.buf.
	o.flushDue = true
	c.fe.log.Info("control channel connected", "control", c.fe.cfg.Control, "id", c.fe.s.id)
	if !o.upClosed {
		o.upClosed = true
		close(c.up)
	}
	c.fe.wakeOwner() // the request socket's owner waits for this
}

// flushUp sends what waited for the connection to come up: the RESET due,
// then the held ACKs (a held ACK may be close to too late, so not at the
// owner's next wake-up).
func (o *ctlOwner) flushUp() {
	if !o.flushDue {
		return
	}
	o.flushDue = false
	if o.resetDue {
		o.resetDue = false
		o.send(zmqx.AppendReset(o.buf[:0]))
	}
	o.drainAcks()
}

// fallBack gives up waiting for the front end's answer to HELLO: a front
// end that predates WELCOME never sends one, and one that reads the
// connection would have closed it by now if it did not (zmqx.WelcomeWait).
func (o *ctlOwner) fallBack() {
	o.legacy = true
	o.c.fe.log.Warn("the front end did not answer HELLO (WELCOME) in time: taking it for one that predates WELCOME and counting the "+
		"control connection up without it; ACKs sent while a front end is not reading the connection are lost (upgrade it)",
		"control", o.c.fe.cfg.Control, "waited", welcomeWait)
	o.up()
}

// testHookAckDrain, when set by tests, is called by the owner before it
// takes the queued ACKs; queued reports how many there are.
var testHookAckDrain func(queued func() int)

// drainAcks sends every queued ACK, as few messages as possible: "ACK id id
// id", up to maxAckIDs ids each.
func (o *ctlOwner) drainAcks() {
	c := o.c
	if testHookAckDrain != nil {
		testHookAckDrain(func() int {
			c.ackMu.Lock()
			defer c.ackMu.Unlock()
			return len(c.acks)
		})
	}
	c.ackMu.Lock()
	batch := c.acks
	c.acks = o.batch[:0]
	grants := c.grants
	c.grants = o.grants[:0]
	nacks := c.nacks
	c.nacks = nil
	c.ackMu.Unlock()
	if len(nacks) > 0 {
		o.buf = zmqx.AppendNack(o.buf[:0], nacks...)
		o.send(o.buf)
	}
	// Not when the lease lapsed, nor so late that the front end may have
	// re-sent the request (lease.go): those are cancelled instead. A
	// flight whose Err() dropped its ACK first is skipped. (A request that
	// is already over is still acknowledged: the front end expects it.)
	keep := batch[:0]
	// Held, not sent, while the front end does not hear us (no connection
	// up): they go out once one is, unless the lease lapses or they would
	// be too late by then.
	hold := !c.connected.Load()
	var held []*flight
	for _, fl := range batch {
		switch {
		case c.lapsed():
			// checkLease runs next and cancels the ones already sent.
			if fl.ackState.CompareAndSwap(ackQueued, ackDropped) {
				fl.cancel()
			}
		case fl.confirmed == nil && fl.ackTooLate():
			// (One that waits for CONFIRM is the front end's to judge.)
			if fl.ackState.CompareAndSwap(ackQueued, ackDropped) {
				fl.cancel()
				c.fe.s.droppedLate.Add(1)
				c.fe.log.Debug("not acknowledging a request that started too close to its dispatch deadline", "conn", fl.key.connID)
			}
		case hold:
			if fl.ackState.Load() == ackQueued {
				held = append(held, fl)
			}
		default:
			if fl.ackState.CompareAndSwap(ackQueued, ackSent) {
				fl.ackSentAt = monoNow()
				keep = append(keep, fl)
			}
		}
	}
	for rest := keep; len(rest) > 0; {
		n := min(len(rest), maxAckIDs)
		o.buf = zmqx.AppendAck(o.buf[:0])
		for _, fl := range rest[:n] {
			o.buf = zmqx.AppendID(o.buf, fl.key.connID)
		}
		if !o.send(o.buf) {
			// No control connection after all (it broke just now), or the
			// front end does not read: no credit will come for these. One
			// with a dispatch deadline will be re-sent by the front end:
			// it must not run here too.
			c.fe.log.Debug("control: could not send ACK; serving without flow control", "ids", n)
			for _, fl := range rest[:n] {
				if fl.confirmed != nil {
					// Not started: its ACK goes out again once a
					// connection is up (confirm.go).
					if fl.ackState.CompareAndSwap(ackSent, ackQueued) {
						held = append(held, fl)
					}
					continue
				}
				if fl.deadline != 0 {
					fl.cancel()
				}
				fl.unacked()
			}
		}
		rest = rest[n:]
	}
	if len(held) > 0 {
		c.ackMu.Lock()
		if !c.ackClosed {
			c.acks = append(held, c.acks...)
		}
		c.ackMu.Unlock()
	}
	clear(batch) // the flights may end long before the next batch
	o.batch = batch[:0]
	// After the ACKs: a grant is for a request acknowledged earlier.
	for _, g := range grants {
		o.buf = zmqx.AppendUploadCredit(o.buf[:0], g.connID, g.n)
		if !o.send(o.buf) {
			// The connection broke (its uploads fail with it), or the
			// front end does not read.
			c.fe.log.Debug("control: could not send UCREDIT", "conn", g.connID, "bytes", g.n)
		}
	}
	clear(grants)
	o.grants = grants[:0]
}

func (o *ctlOwner) receive() {
	for {
		if o.rbuf == nil {
			o.rbuf = ctlBufs.Get().(*[]byte)
		}
		// A message that does not fit rbuf (ctlKeepMin bytes) is kept in
		// libzmq's memory, so RecvKeep never reports ErrTooBig here.
		msg, kept, _, err := o.rcv.RecvKeep(*o.rbuf, ctlKeepMin, zmq.DONTWAIT)
		if err != nil {
			if !isEAGAIN(err) {
				o.c.fe.log.Error("control: receive", "err", err)
			}
			return
		}
		if o.c.greeting.Load() {
			// The front end speaks on this connection: it reads it too.
			o.up()
		}
		hold := bodyChunk{buf: o.rbuf}
		if kept != nil {
			msg, hold = kept.Bytes(), bodyChunk{kept: kept}
		}
		switch {
		case o.handle(msg, hold):
			if kept == nil {
				o.rbuf = nil // the upload has it now
			}
		case kept != nil:
			kept.Close()
		}
	}
}

// ctlKeepMin is the message size from which the control channel leaves a
// message in libzmq's memory: BODY chunks of streamed uploads, which then
// reach the handler without a copy in the worker.
const ctlKeepMin = 64 << 10

// handle acts on one message from the front end. Unknown verbs are ignored,
// so that the front end can grow the protocol; empty frames (an envelope
// delimiter) too. msg lies in the buffer hold holds (a ctlBufs buffer, or
// libzmq's message), which the caller reuses or frees unless handle
// reports that it kept it (a BODY, whose upload releases it).
func (o *ctlOwner) handle(msg []byte, hold bodyChunk) (kept bool) {
	fe := o.c.fe
	m, err := zmqx.Parse(msg)
	switch {
	case err == zmqx.ErrMalformed:
		fe.log.Warn("control: malformed "+m.Verb.String(), "msg", printable(msg, 100))
		return false
	case err != nil && len(msg) > 0:
		fe.log.Debug("control: ignoring unknown message", "msg", printable(msg, 100))
		return false
	}
	switch m.Verb {
	case zmqx.Credit:
		fe.s.grant(flightKey{fe, string(m.ID)}, min(m.N, maxGrant))
	case zmqx.Disconnect:
		// Also finds an addressed request still waiting for a slot: it
		// was admitted (registered) when its REQ arrived, before this.
		fe.s.cancelFlights(flightKey{fe, string(m.ID)}, "")
	case zmqx.Req:
		if hold.kept != nil && o.c.deliverSeen(m.Data, hold.kept) {
			return true // a large WebSocket message, read in place
		}
		// The request may alias what it is given, and msg's buffer is
		// reused: copy it out.
		o.c.addressed(bytes.Clone(m.Data))
	case zmqx.Body:
		// The upload keeps the bytes, and their buffer with them, without
		// copying.
		hold.data = m.Data
		fe.s.deliverBody(flightKey{fe, string(m.ID)}, hold)
		return true
	case zmqx.BodyEnd:
		fe.s.endBody(flightKey{fe, string(m.ID)}, io.EOF)
	case zmqx.BodyErr:
		fe.s.endBody(flightKey{fe, string(m.ID)}, errUploadFailed)
	case zmqx.Pause:
		// The front end sees no answers from us (hung handlers): take no
		// more requests from it until it says RESUME.
		if !fe.paused.Swap(true) {
			fe.log.Warn("front end paused us: it sees requests unanswered and none answered (hung handlers?); handing its requests back until it resumes us",
				"control", fe.cfg.Control, "running", fe.s.running.Load())
			fe.wakeOwner() // wakes an owner waiting for a slot, to hand it back
		}
	case zmqx.Resume:
		if fe.paused.Swap(false) {
			fe.log.Info("front end resumed us", "control", fe.cfg.Control)
		}
	case zmqx.Confirm:
		// The front end holds these requests as ours: they may start.
		for id, rest := zmqx.NextID(m.IDs); id != nil; id, rest = zmqx.NextID(rest) {
			fe.s.confirmFlights(flightKey{fe, string(id)})
		}
	case zmqx.Welcome:
		// Our HELLO was heard (receive counted the connection up). A front
		// end taken for one without WELCOME has been upgraded.
		o.legacy = false
	case zmqx.VerbUnknown: // an empty frame (an envelope delimiter)
	default:
		fe.log.Debug("control: ignoring a worker's message", "msg", printable(msg, 100))
	}
	return false
}

// monitor reads the DEALER's connection events.
func (o *ctlOwner) monitor(mon *zmq.Socket) {
	for {
		ev, _, _, err := mon.RecvEvent(zmq.DONTWAIT)
		if err != nil {
			return
		}
		switch ev {
		case zmq.EVENT_HANDSHAKE_SUCCEEDED:
			// First read what the previous connection left in the queue:
			// a message read after HELLO must be the new connection's, as
			// it tells that the front end reads it.
			o.receive()
			o.needHello = true
			o.hello()
		case zmq.EVENT_DISCONNECTED:
			if o.c.connected.Swap(false) {
				o.c.fe.log.Warn("control channel disconnected; lifting flow control of its requests", "control", o.c.fe.cfg.Control)
			}
			if o.c.greeting.Swap(false) {
				o.c.fe.log.Info("control connection closed before the front end answered HELLO (it did not read it; dialling again)",
					"control", o.c.fe.cfg.Control)
				o.c.fe.wakeOwner()
			}
			o.needHello = false
			// No more CREDIT can come for what was ACKed on that
			// connection: waiting for it would hang those handlers.
			o.c.fe.s.liftFlows(o.c.fe)
			// And BODY messages sent meanwhile are lost: a streamed
			// body cannot be completed.
			o.c.fe.s.failUploads(o.c.fe, errUploadLost)
			// An ACK sent on it may be lost too: one whose request
			// waits for CONFIRM goes out again on the next connection.
			o.requeueUnconfirmed(monoNow())
		}
	}
}
