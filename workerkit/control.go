package workerkit

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/zmqbridge/caddy-zmq/internal/zmqio"
)

// The control channel, protocol extension zmqx/1: one DEALER per front end,
// connected to the front end's ROUTER, with the worker id as its identity.
// Every message is one frame of text.
//
//	worker -> front end: HELLO <max_concurrent> | HB | ACK <conn_id> [<conn_id> ...] | BYE |
//	                     UCREDIT <conn_id> <bytes> | NACK <conn_id> [<conn_id> ...] | RESET
//	front end -> worker: CREDIT <conn_id> <bytes> | DISCONNECT <conn_id> | REQ <request frame> |
//	                     BODY <conn_id> <bytes> | BODYEND <conn_id> | BODYERR <conn_id> |
//	                     PAUSE | RESUME

const (
	// windowHeader is the trusted request header that asks for flow
	// control of the reply: its value is the window in bytes.
	windowHeader = "ZMQX_WINDOW"
	// ctlHeartbeat is how often a worker says HB; the front end declares it
	// dead after 1 s of silence.
	ctlHeartbeat = 250 * time.Millisecond
	// ctlCloseLinger lets BYE and the last messages leave at shutdown.
	ctlCloseLinger = 200 * time.Millisecond
	// ctlStartWait is how long a fresh worker waits for the control
	// handshake before it takes work from a front end without it.
	ctlStartWait = time.Second
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
	fe   *frontEnd
	wake chan struct{} // something is queued: wake the owner
	dead chan struct{} // closed when the owner is gone
	up   chan struct{} // closed at the first completed handshake

	// connected: HELLO went out on the current connection, so an ACK can
	// go out too. Written by the owner, read when a request starts.
	connected     atomic.Bool
	warnedUnacked atomic.Bool // logged once per outage
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

func newCtlConn(fe *frontEnd) *ctlConn {
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

// waitUp waits for the first handshake of the control connection, at most
// d; false means it did not happen (or the worker is stopping).
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
	rcv       *zmqio.Receiver
	rbuf      *[]byte // the next message is received into it (ctlBufs)
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
				o.send("BYE")
				fe.log.Debug("control: said BYE")
			default:
			}
		}
		o.checkLease()
		o.drainAcks()
		if now := time.Now(); !now.Before(nextHB) {
			o.send("HB")
			nextHB = now.Add(ctlHeartbeat)
		}
		// Sends refuse while the lease is lapsed (a freeze may fall
		// between the check above and a send): notice it now, not after
		// the next wait.
		o.checkLease()
		o.monitor(mon)
		if o.needHello {
			// Writable once the new pipe is attached.
			if ev, err := dealer.GetEvents(); err == nil && ev&zmq.POLLOUT != 0 {
				o.hello()
			}
		}
		o.receive()
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
func (o *ctlOwner) send(msg string) bool { return o.sendBytes([]byte(msg)) }

// sendBytes is send for a message built in a buffer.
func (o *ctlOwner) sendBytes(msg []byte) bool {
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
		o.c.noteSent(at)
	}
	return err == nil
}

// hello greets a new connection: first after every handshake, before any
// other message on it.
func (o *ctlOwner) hello() {
	at := monoNow()
	if o.c.lapsedAt(at) {
		return // checkLease first; the owner polls for POLLOUT again
	}
	if _, err := o.sock.Send("HELLO "+strconv.Itoa(o.c.fe.s.maxConc), zmq.DONTWAIT); err != nil {
		return // pipe not attached yet: poll for POLLOUT and retry
	}
	o.needHello = false
	o.c.noteSent(at)
	o.c.connected.Store(true)
	o.c.warnedUnacked.Store(false)
	// A new connection starts unpaused: a front end that still finds us
	// hung says PAUSE again.
	o.c.fe.paused.Store(false)
	o.c.fe.log.Info("control channel connected", "control", o.c.fe.cfg.Control, "id", o.c.fe.s.id)
	if !o.upClosed {
		o.upClosed = true
		close(o.c.up)
	}
	if o.bye {
		_, _ = o.sock.Send("BYE", zmq.DONTWAIT)
	}
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
		o.buf = append(o.buf[:0], "NACK"...)
		for _, id := range nacks {
			o.buf = append(o.buf, ' ')
			o.buf = append(o.buf, id...)
		}
		o.sendBytes(o.buf)
	}
	// Not when the lease lapsed, nor so late that the front end may have
	// re-sent the request (lease.go): those are cancelled instead. A
	// flight whose Err() dropped its ACK first is skipped. (A request that
	// is already over is still acknowledged: the front end expects it.)
	keep := batch[:0]
	for _, fl := range batch {
		switch {
		case c.lapsed():
			// checkLease runs next and cancels the ones already sent.
			if fl.ackState.CompareAndSwap(ackQueued, ackDropped) {
				fl.cancel()
			}
		case fl.ackTooLate():
			if fl.ackState.CompareAndSwap(ackQueued, ackDropped) {
				fl.cancel()
				c.fe.s.droppedLate.Add(1)
				c.fe.log.Debug("not acknowledging a request that started too close to its dispatch deadline", "conn", fl.key.connID)
			}
		default:
			if fl.ackState.CompareAndSwap(ackQueued, ackSent) {
				keep = append(keep, fl)
			}
		}
	}
	for rest := keep; len(rest) > 0; {
		n := min(len(rest), maxAckIDs)
		o.buf = append(o.buf[:0], "ACK"...)
		for _, fl := range rest[:n] {
			o.buf = append(o.buf, ' ')
			o.buf = append(o.buf, fl.key.connID...)
		}
		if !o.sendBytes(o.buf) {
			// No control connection after all (it broke just now), or the
			// front end does not read: no credit will come for these. One
			// with a dispatch deadline will be re-sent by the front end:
			// it must not run here too.
			c.fe.log.Debug("control: could not send ACK; serving without flow control", "ids", n)
			for _, fl := range rest[:n] {
				if fl.deadline != 0 {
					fl.cancel()
				}
				fl.unacked()
			}
		}
		rest = rest[n:]
	}
	clear(batch) // the flights may end long before the next batch
	o.batch = batch[:0]
	// After the ACKs: a grant is for a request acknowledged earlier.
	for _, g := range grants {
		o.buf = append(o.buf[:0], "UCREDIT "...)
		o.buf = append(o.buf, g.connID...)
		o.buf = append(o.buf, ' ')
		o.buf = strconv.AppendInt(o.buf, g.n, 10)
		if !o.sendBytes(o.buf) {
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
	verb, rest, _ := bytes.Cut(msg, []byte{' '})
	switch string(verb) {
	case "CREDIT":
		conn, n, ok := bytes.Cut(rest, []byte{' '})
		grant, err := strconv.ParseInt(string(n), 10, 64)
		if !ok || err != nil || grant <= 0 || !isConnID(conn) {
			fe.log.Warn("control: malformed CREDIT", "msg", printable(msg, 100))
			return
		}
		fe.s.grant(flightKey{fe, string(conn)}, min(grant, maxGrant))
	case "DISCONNECT":
		if !isConnID(rest) {
			fe.log.Warn("control: malformed DISCONNECT", "msg", printable(msg, 100))
			return
		}
		// Also finds an addressed request still waiting for a slot: it
		// was admitted (registered) when its REQ arrived, before this.
		fe.s.cancelFlights(flightKey{fe, string(rest)}, "")
	case "REQ":
		// The request may alias what it is given, and msg's buffer is
		// reused: copy it out.
		o.c.addressed(bytes.Clone(rest))
	case "BODY":
		// BODY <conn_id> <bytes>: the bytes may be anything, spaces too.
		conn, data, _ := bytes.Cut(rest, []byte{' '})
		if !isConnID(conn) {
			fe.log.Warn("control: malformed BODY", "msg", printable(msg, 100))
			return
		}
		// The upload keeps data, and its buffer with it, without copying.
		hold.data = data
		fe.s.deliverBody(flightKey{fe, string(conn)}, hold)
		return true
	case "BODYEND", "BODYERR":
		if !isConnID(rest) {
			fe.log.Warn("control: malformed "+string(verb), "msg", printable(msg, 100))
			return
		}
		err := io.EOF
		if string(verb) == "BODYERR" {
			err = errUploadFailed
		}
		fe.s.endBody(flightKey{fe, string(rest)}, err)
	case "PAUSE":
		// The front end sees no answers from us (hung handlers): take no
		// more requests from it until it says RESUME.
		if !fe.paused.Swap(true) {
			fe.log.Warn("front end paused us: it sees requests unanswered and none answered (hung handlers?); handing its requests back until it resumes us",
				"control", fe.cfg.Control, "running", fe.s.running.Load())
			fe.wakeOwner() // wakes an owner waiting for a slot, to hand it back
		}
	case "RESUME":
		if fe.paused.Swap(false) {
			fe.log.Info("front end resumed us", "control", fe.cfg.Control)
		}
	case "":
	default:
		fe.log.Debug("control: ignoring unknown message", "msg", printable(msg, 100))
	}
	return false
}

func isConnID(b []byte) bool {
	if len(b) == 0 || len(b) > 20 {
		return false
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
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
			o.needHello = true
			o.hello()
		case zmq.EVENT_DISCONNECTED:
			if o.c.connected.Swap(false) {
				o.c.fe.log.Warn("control channel disconnected; lifting flow control of its requests", "control", o.c.fe.cfg.Control)
			}
			o.needHello = false
			// No more CREDIT can come for what was ACKed on that
			// connection: waiting for it would hang those handlers.
			o.c.fe.s.liftFlows(o.c.fe)
			// And BODY messages sent meanwhile are lost: a streamed
			// body cannot be completed.
			o.c.fe.s.failUploads(o.c.fe, errUploadLost)
		}
	}
}

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
func (fe *frontEnd) runAddressed() {
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

// minCreditChunk is the credit a flow-controlled reply waits for before it
// sends what fits (see flow.await).
const minCreditChunk = 16 << 10

// flow is the reply credit of one windowed request. Only the handler's
// goroutine takes credit; the control owner grants it.
//
// The front end grants credit in batches of at least a quarter window. A
// writer that waited for room for a whole 256 KiB frame could wait forever:
// with, say, 10 KiB outstanding (less than a batch) and a window of 256 KiB
// nothing more is granted. So the response writer cuts its frames to the
// credit it has, and waits only while the credit is below low, which is at
// most half the window: then at least half a window is outstanding, which
// the front end grants back as the client reads it.
type flow struct {
	window int64
	low    int64 // wait while the credit is below this
	credit atomic.Int64
	lifted atomic.Bool
	wake   chan struct{} // capacity 1: credit was granted, or the flow lifted
	// stalls, if set, counts the waits for credit (Worker.Stats).
	stalls *stallCounter
}

func newFlow(window int64) *flow {
	f := &flow{window: window, low: max(1, min(minCreditChunk, window/2)), wake: make(chan struct{}, 1)}
	f.credit.Store(window)
	return f
}

func (f *flow) grant(n int64) {
	f.credit.Add(n)
	f.signal()
}

func (f *flow) lift() {
	f.lifted.Store(true)
	f.signal()
}

func (f *flow) signal() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// testHookFlowBlocked, when set by tests, is called when a reply waits for
// credit.
var testHookFlowBlocked func(connCredit, need int64)

// await waits until the credit is at least f.low and returns it (a lower
// bound: only grants happen meanwhile), or math.MaxInt64 once lifted.
func (f *flow) await(ctx context.Context, dead <-chan struct{}) (int64, error) {
	return f.wait(ctx, dead, f.low)
}

// take waits until n body bytes may be sent and takes them from the credit.
// A frame larger than the window waits for the whole window.
func (f *flow) take(ctx context.Context, dead <-chan struct{}, n int64) error {
	if n <= 0 {
		return nil
	}
	if _, err := f.wait(ctx, dead, min(n, f.window)); err != nil {
		return err
	}
	f.credit.Add(-n)
	return nil
}

func (f *flow) wait(ctx context.Context, dead <-chan struct{}, need int64) (int64, error) {
	var stalledAt time.Time // zero while it has not waited
	for {
		if f.lifted.Load() {
			f.stalls.end(stalledAt)
			return math.MaxInt64, nil
		}
		c := f.credit.Load()
		if c >= need {
			f.stalls.end(stalledAt)
			return c, nil
		}
		if testHookFlowBlocked != nil {
			testHookFlowBlocked(c, need)
		}
		if stalledAt.IsZero() && f.stalls != nil {
			stalledAt = time.Now()
			f.stalls.n.Add(1)
		}
		select {
		case <-f.wake:
		case <-ctx.Done():
			f.stalls.end(stalledAt)
			return 0, errClientGone
		case <-dead:
			f.stalls.end(stalledAt)
			return 0, errWorkerStopped
		}
	}
}

// stallCounter counts the waits for reply credit and the time spent in
// them (Worker.Stats).
type stallCounter struct {
	n, nanos atomic.Int64
}

// end adds the wait that began at since, if any; a nil counter counts
// nothing.
func (s *stallCounter) end(since time.Time) {
	if s != nil && !since.IsZero() {
		s.nanos.Add(int64(time.Since(since)))
	}
}
