package workerkit

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"strconv"
	"sync/atomic"
	"time"

	zmq "github.com/pebbe/zmq4"
)

// The control channel, protocol extension zmqx/1: one DEALER per front end,
// connected to the front end's ROUTER, with the worker id as its identity.
// Every message is one frame of text.
//
//	worker -> front end: HELLO <max_concurrent> | HB | ACK <conn_id> | BYE
//	front end -> worker: CREDIT <conn_id> <bytes> | DISCONNECT <conn_id>

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
)

// ctlSeq numbers the inproc endpoints of control owners (one libzmq context
// per Serve, but tests run several workers in a process).
var ctlSeq atomic.Uint64

// ctlConn is the control channel of one front end. Its sockets belong to
// the goroutine running run (and one to its waker); other goroutines talk to
// it through channels.
type ctlConn struct {
	fe   *frontEnd
	acks chan *flight  // ACKs to send, in arrival order
	wake chan struct{} // something is queued: poke the owner out of zmq_poll
	dead chan struct{} // closed when the owner is gone
	up   chan struct{} // closed at the first completed handshake
}

func newCtlConn(fe *frontEnd) *ctlConn {
	return &ctlConn{
		fe: fe,
		// One ACK per handler slot at most is waiting: the goroutine that
		// holds the slot waits for it.
		acks: make(chan *flight, fe.s.maxConc),
		wake: make(chan struct{}, 1),
		dead: make(chan struct{}),
		up:   make(chan struct{}),
	}
}

// ack queues the ACK of a windowed request; fl.acked is closed once the
// owner tried to send it. Called by the request socket's owner.
func (c *ctlConn) ack(fl *flight) {
	select {
	case c.acks <- fl:
	case <-c.dead:
		close(fl.acked)
		return
	}
	c.poke()
}

func (c *ctlConn) poke() {
	select {
	case c.wake <- struct{}{}:
	default:
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
	connected bool // HELLO went out on the current connection
	bye       bool // the worker is draining: say BYE after every HELLO
	upClosed  bool
}

// run owns the DEALER, its monitor and the receiving end of the waker.
func (c *ctlConn) run(ready chan<- error, quit <-chan struct{}) {
	defer close(c.dead)
	fe := c.fe
	s := fe.s
	seq := ctlSeq.Add(1)
	monEP := fmt.Sprintf("inproc://workerkit-ctl-monitor-%d", seq)
	wakeEP := fmt.Sprintf("inproc://workerkit-ctl-wake-%d", seq)

	var dealer, mon, wakeRx *zmq.Socket
	closeAll := func() {
		for _, sock := range []*zmq.Socket{wakeRx, mon, dealer} {
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
	if err == nil {
		if wakeRx = newSock(zmq.PAIR); wakeRx == nil {
			err = fmt.Errorf("cannot create waker socket")
		} else {
			err = wakeRx.Bind(wakeEP)
		}
	}
	if err == nil {
		err = dealer.Connect(fe.cfg.Control)
	}
	if err != nil {
		err = fmt.Errorf("workerkit: control socket for %s: %w", fe.cfg.Control, err)
		closeAll()
		ready <- err
		return
	}
	ready <- nil

	// The waker turns Go-side events into a message on an inproc PAIR, so
	// that the owner can sleep in zmq_poll and still hear about them.
	wakerDone := make(chan struct{})
	go c.runWaker(wakeEP, quit, wakerDone)

	o := &ctlOwner{c: c, sock: dealer}
	poller := zmq.NewPoller()
	dealerID := poller.Add(dealer, zmq.POLLIN)
	poller.Add(mon, zmq.POLLIN)
	poller.Add(wakeRx, zmq.POLLIN)
	stop := s.stop
	nextHB := time.Now().Add(ctlHeartbeat)
	for {
		select {
		case <-quit:
			o.drainAcks()
			_ = dealer.Monitor("", 0)
			_ = dealer.SetLinger(ctlCloseLinger)
			closeAll()
			<-wakerDone
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
		o.drainAcks()
		if now := time.Now(); !now.Before(nextHB) {
			o.send("HB")
			nextHB = now.Add(ctlHeartbeat)
		}
		events := zmq.POLLIN
		if o.needHello {
			events |= zmq.POLLOUT // writable once the new pipe is attached
		}
		_, _ = poller.Update(dealerID, events)
		// zmq_poll counts whole milliseconds: round up, never spin.
		timeout := max(time.Until(nextHB), 0) + time.Millisecond - 1
		polled, err := poller.Poll(timeout)
		if err != nil {
			fe.log.Error("control: poll", "err", err)
			continue
		}
		for _, p := range polled {
			switch p.Socket {
			case dealer:
				if p.Events&zmq.POLLOUT != 0 && o.needHello {
					o.hello()
				}
				if p.Events&zmq.POLLIN != 0 {
					o.receive()
				}
			case mon:
				o.monitor(mon)
			case wakeRx:
				for {
					if _, err := wakeRx.RecvBytes(zmq.DONTWAIT); err != nil {
						break
					}
				}
			}
		}
	}
}

// runWaker owns the sending end of the waker PAIR.
func (c *ctlConn) runWaker(ep string, quit <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	sock, err := c.fe.s.zctx.NewSocket(zmq.PAIR)
	if err == nil {
		err = firstErr(sock.SetLinger(0), sock.Connect(ep))
	}
	if err != nil {
		c.fe.log.Error("control: waker socket", "err", err)
		if sock != nil {
			_ = sock.Close()
		}
		// Without a waker the owner still wakes for heartbeats; ACKs and
		// BYE are then late, never lost.
		<-quit
		return
	}
	defer sock.Close()
	poke := func() { _, _ = sock.SendBytes(nil, zmq.DONTWAIT) }
	stop := c.fe.s.stop
	for {
		select {
		case <-c.wake:
			poke()
		case <-stop:
			stop = nil
			poke()
		case <-quit:
			poke()
			return
		}
	}
}

// send sends one control message; false if there is no control connection
// (or its queue is full), which is never worth waiting for.
func (o *ctlOwner) send(msg string) bool {
	if o.needHello && msg != "HELLO" {
		o.hello()
	}
	_, err := o.sock.Send(msg, zmq.DONTWAIT)
	if err != nil && !isEAGAIN(err) {
		o.c.fe.log.Warn("control: send", "msg", msg, "err", err)
	}
	return err == nil
}

// hello greets a new connection: first after every handshake, before any
// other message on it.
func (o *ctlOwner) hello() {
	if _, err := o.sock.Send("HELLO "+strconv.Itoa(o.c.fe.s.maxConc), zmq.DONTWAIT); err != nil {
		return // pipe not attached yet: poll for POLLOUT and retry
	}
	o.needHello, o.connected = false, true
	o.c.fe.log.Info("control channel connected", "control", o.c.fe.cfg.Control, "id", o.c.fe.s.id)
	if !o.upClosed {
		o.upClosed = true
		close(o.c.up)
	}
	if o.bye {
		_, _ = o.sock.Send("BYE", zmq.DONTWAIT)
	}
}

func (o *ctlOwner) drainAcks() {
	for {
		select {
		case fl := <-o.c.acks:
			fl.ackOK = o.send("ACK " + fl.key.connID)
			close(fl.acked)
		default:
			return
		}
	}
}

func (o *ctlOwner) receive() {
	for {
		msg, err := o.sock.RecvBytes(zmq.DONTWAIT)
		if err != nil {
			if !isEAGAIN(err) {
				o.c.fe.log.Error("control: receive", "err", err)
			}
			return
		}
		o.handle(msg)
	}
}

// handle acts on one message from the front end. Unknown verbs are ignored,
// so that the front end can grow the protocol; empty frames (an envelope
// delimiter) too.
func (o *ctlOwner) handle(msg []byte) {
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
		fe.s.cancelFlights(flightKey{fe, string(rest)}, "")
	case "":
	default:
		fe.log.Debug("control: ignoring unknown message", "msg", printable(msg, 100))
	}
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
			if o.connected {
				o.c.fe.log.Warn("control channel disconnected; lifting flow control of its requests", "control", o.c.fe.cfg.Control)
			}
			o.needHello, o.connected = false, false
			// No more CREDIT can come for what was ACKed on that
			// connection: waiting for it would hang those handlers.
			o.c.fe.s.liftFlows(o.c.fe)
		}
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
	for {
		if f.lifted.Load() {
			return math.MaxInt64, nil
		}
		c := f.credit.Load()
		if c >= need {
			return c, nil
		}
		if testHookFlowBlocked != nil {
			testHookFlowBlocked(c, need)
		}
		select {
		case <-f.wake:
		case <-ctx.Done():
			return 0, errClientGone
		case <-dead:
			return 0, errWorkerStopped
		}
	}
}
