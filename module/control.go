package caddyzmq

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	zmq "github.com/pebbe/zmq4"
	"go.uber.org/zap"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/zmqio"
	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

// The control channel is this project's extension to Mongrel2's protocol
// (zmqx/1: package internal/zmqx, docs/zmqx.md): Caddy binds a ROUTER, each
// workerkit worker connects a DEALER whose identity is its worker id. Over it a worker says
// which requests it took (ACK) and that it lives (HB); Caddy grants reply
// credit and forwards disconnects to exactly that worker. Mongrel2
// handlers never connect to it and are unaffected.

// workerDeadAfter is how long a worker may stay silent on the control
// channel before it is considered gone.
const workerDeadAfter = zmqx.LivenessBound

// ctlMsg is one message for a worker: identity and payload.
type ctlMsg struct {
	worker  string
	payload []byte
	// body, when set, is the payload instead: its first bodyLen bytes, in
	// C memory that libzmq sends without a copy and then frees (a BODY
	// message of a streamed upload).
	body    *zmqio.CBuf
	bodyLen int
	// req marks a REQ: a request addressed to this worker (deliverReq).
	req bool
	// upload, set on the messages of a streamed upload (BODY, BODYEND,
	// BODYERR), names the exchange whose body they carry (deliverUpload).
	upload *exchange
}

// release frees what m holds that the garbage collector does not see.
func (m ctlMsg) release() { m.body.Free() }

// bytes is the message: payload, or the bytes of body.
func (m ctlMsg) bytes() []byte {
	if m.body != nil {
		return m.body.Bytes()[:m.bodyLen]
	}
	return m.payload
}

// controlPlane owns the ROUTER socket. Requests hand it messages through a
// channel, which its owner goroutine serves in the same select that waits
// for the socket.
type controlPlane struct {
	endpoint string
	logger   *zap.Logger
	t        *transport
	in       chan ctlMsg

	mu      sync.Mutex
	workers map[string]*workerInfo
	// lost: workers declared lost recently. Their pipes may linger on the
	// request socket until ZMTP heartbeats drop them, so they still count
	// as zmqx peers for dispatch deadlines meanwhile.
	lost map[string]time.Time

	acks atomic.Uint64
	// redials counts the lingering connections closed because their key
	// dialled again (redial.go).
	redials atomic.Uint64
	// hungAfter is the handler's hung_timeout (0: off). The last config
	// provisioned on these sockets sets it.
	hungAfter atomic.Int64
	// ids binds worker ids to the CURVE keys that speak for them.
	ids workerKeys
	// conns follows the control socket's connections with CURVE
	// (peerconns.go, ctlguard.go).
	conns connTracker
	// replyGone holds reply connections that ended while their worker
	// may still be on the control channel (ctlguard.go).
	replyGone suspectConns

	// stalled holds, per worker, REQs its full queue refused, in order;
	// stalledN counts them (deliverReq). Owner-only.
	stalled  map[string][]ctlMsg
	stalledN int
	// welcome lists the workers whose HELLO was just read: the owner
	// answers each with WELCOME on the same connection (sendAnswers)
	// before it sends anything else. Guarded by mu (tests hand messages in
	// from other goroutines).
	welcome []string
	// confirms holds the CONFIRMs due for the ACKs just read (handleMsg),
	// sent by the owner after the WELCOMEs (sendAnswers). Not through the
	// queue, which drops when full: a worker waits for its CONFIRM before
	// it runs the request. Guarded by mu, as welcome.
	confirms []ctlMsg

	controlObs // operator's view: history and counts (drain.go)
}

type workerInfo struct {
	lastSeen      time.Time
	maxConcurrent int
	draining      bool
	// remoteAddr is the peer address of the connection it last said HELLO
	// on (zmqio.UserReceiver.Addr: ip:port for tcp).
	remoteAddr string

	// answered counts this worker's requests whose first reply frame has
	// arrived; the receive owner adds to it, the sweep watches it move.
	answered atomic.Uint64
	// Guarded by controlPlane.mu, used by the sweep (hung.go).
	seenAnswered uint64
	lastProgress time.Time
	hung         bool // holds requests and answers none
	paused       bool // told PAUSE: it takes no new requests
	pausedAt     time.Time
	trips        int // pauses since it last answered anything

	workerObs // operator's view and drain (drain.go)
}

func newControlPlane(t *transport, endpoint string) *controlPlane {
	return &controlPlane{
		endpoint: endpoint,
		logger:   t.logger,
		t:        t,
		in:       make(chan ctlMsg, outQueueSize),
		workers:  make(map[string]*workerInfo),
	}
}

// send queues a control message without blocking; control messages are
// advisory (a lost CREDIT is re-granted with the next one, a lost
// DISCONNECT falls back on timeouts), so a full queue drops. A request
// (REQ) is not advisory: dropped, its exchange fails with errReqNotQueued
// at once (the client gets 503, a broadcast reports it not sent) instead
// of waiting for a timeout; the worker is alive, so its pins stay.
func (c *controlPlane) send(worker string, payload []byte) {
	c.enqueue(ctlMsg{worker: worker, payload: payload})
}

func (c *controlPlane) enqueue(m ctlMsg) {
	select {
	case c.in <- m:
	default:
		c.logger.Warn("control queue full, dropping message", zap.String("worker", m.worker))
		c.undeliverable(m, errReqNotQueued)
	}
}

func (c *controlPlane) credit(worker string, id uint64, n int) {
	c.send(worker, zmqx.AppendCredit(make([]byte, 0, 48), id, int64(n)))
}

// sendRequest addresses a request frame to one worker (session affinity).
func (c *controlPlane) sendRequest(worker string, frame []byte) {
	c.enqueue(ctlMsg{worker: worker, payload: zmqx.AppendReq(make([]byte, 0, len(frame)+8), frame), req: true})
}

func (c *controlPlane) disconnect(worker string, id uint64) {
	c.send(worker, zmqx.AppendDisconnect(make([]byte, 0, 32), id))
}

// run is the ROUTER owner. It waits in one select for messages to send
// (the Go channel), for the socket to signal (zmqio.Notifier), for the
// sweep's tick and for quit; no goroutine sits in libzmq.
func (c *controlPlane) run(zctx *zmq.Context, ready chan<- error, quit <-chan struct{}, wg *sync.WaitGroup) {
	defer wg.Done()
	router, err := zctx.NewSocket(zmq.ROUTER)
	if err != nil {
		ready <- fmt.Errorf("creating control socket: %w", err)
		return
	}
	defer router.Close()
	if err := router.SetLinger(0); err != nil {
		ready <- err
		return
	}
	// Unroutable messages (a worker that left) fail instead of vanishing.
	if err := router.SetRouterMandatory(1); err != nil {
		ready <- err
		return
	}
	// Without CURVE, a worker that reconnects under its id takes the route
	// over at once, even while libzmq still holds its old connection.
	// With CURVE, handover is off. Why: handover gives the id to whoever
	// says it last, so a second allowed key claiming a worker's id would
	// take its route, and with it the messages meant for it (affinity REQs,
	// WebSocket messages, CREDIT), before saying anything we could check;
	// libzmq terminates the first connection as the second is identified.
	// Off, libzmq keeps the id with the connection that has it and ignores
	// the newcomer (it reads nothing from it). A worker redialling while
	// its old connection lingers is such a newcomer too: reapSilent closes
	// any control connection that says nothing, so it dials again, and gets
	// in once the old connection is gone (ZMTP heartbeats drop a dead one).
	if err := router.SetRouterHandover(c.t.auth == nil); err != nil {
		ready <- err
		return
	}
	if err := c.t.configure(router); err != nil {
		ready <- err
		return
	}
	stopWatch, err := c.t.watchHandshakes(zctx, router, &c.conns, nil)
	if err != nil {
		ready <- fmt.Errorf("control socket: %w", err)
		return
	}
	defer stopWatch()
	if err := router.Bind(c.endpoint); err != nil {
		ready <- fmt.Errorf("binding control endpoint %s: %w", c.endpoint, err)
		return
	}
	in, err := zmqio.NewUserReceiver(router)
	if err != nil {
		ready <- fmt.Errorf("control socket: %w", err)
		return
	}
	defer in.Close()
	// A worker's address is read once per connection, from the HELLO that
	// opens it, not from every message.
	if err := in.ReadAddrOf(zmqx.Hello.String()); err != nil {
		ready <- fmt.Errorf("control socket: %w", err)
		return
	}
	// With CURVE, which key speaks on which connection (peerconns.go).
	in.ReadFD(c.t.auth != nil)
	notify, err := zmqio.NewNotifier(router)
	if err != nil {
		ready <- fmt.Errorf("control socket: %w", err)
		return
	}
	defer notify.Close()
	rs := &ctlScratch{id: make([]byte, 256), payload: make([]byte, 64<<10), extra: make([]byte, 256)}
	ready <- nil

	tick := time.NewTicker(sweepInterval)
	defer tick.Stop()
	for {
		select {
		case m := <-c.in:
			c.deliver(router, m)
			takeQueued(c.in, func(m ctlMsg) { c.deliver(router, m) })
		case <-notify.C():
		case now := <-tick.C:
			c.sweep(now)
		case <-quit:
			// REQs held for a busy worker hold their exchanges and,
			// for a large WebSocket message, a C mapping: fail and free
			// them too.
			for _, q := range c.stalled {
				for _, m := range q {
					c.undeliverable(m, errStopped)
				}
			}
			c.stalled, c.stalledN = nil, 0
			for {
				select {
				case m := <-c.in:
					m.release()
				default:
					return
				}
			}
		}
		// Whatever woke us: a send of ours may have taken the signal of
		// what arrived meanwhile (zmqio.Notifier).
		c.retryStalled(router)
		c.receive(in, rs)
		// The answers to what we just read are sends too: read again
		// after them, until reading leaves nothing to answer.
		for c.sendAnswers(router) {
			c.receive(in, rs)
		}
	}
}

// sendAnswers sends the answers owed to the messages just read: WELCOME
// to each HELLO, then the CONFIRMs of the ACKs. It reports whether there
// were any. Straight from the owner, not through the queue: the queue
// drops when full, and a worker that hears no WELCOME holds its ACKs
// (zmqx.WelcomeWait), one that hears no CONFIRM holds its request. A
// worker that sent HELLO on a connection libzmq attached is reachable now;
// one whose connection went since is not, and needs no answer.
func (c *controlPlane) sendAnswers(router *zmq.Socket) bool {
	c.mu.Lock()
	welcome, confirms := c.welcome, c.confirms
	c.welcome, c.confirms = nil, nil
	c.mu.Unlock()
	for _, w := range welcome {
		c.sendTo(router, ctlMsg{worker: w, payload: zmqx.AppendWelcome(nil)})
	}
	for _, m := range confirms {
		if !c.sendTo(router, m) {
			// Gone, or its queue is full: a worker that still waits
			// sends its ACK again (docs/zmqx.md section 7.5).
			c.logger.Debug("could not send CONFIRM", zap.String("worker", m.worker))
		}
	}
	return len(welcome)+len(confirms) > 0
}

// deliver sends one message to its worker.
func (c *controlPlane) deliver(router *zmq.Socket, m ctlMsg) {
	switch {
	case m.upload != nil:
		c.deliverUpload(router, m)
	case m.req:
		c.deliverReq(router, m)
	default:
		c.sendTo(router, m)
	}
}

// sendResult is what became of one send on the ROUTER.
type sendResult int

const (
	sent      sendResult = iota
	queueFull            // EAGAIN: the worker's queue is at its high-water mark
	notSent              // EHOSTUNREACH (the worker is gone) or another error
)

// trySend sends m to its worker without waiting. It frees nothing: on
// failure the caller decides what becomes of m.
func (c *controlPlane) trySend(router *zmq.Socket, m ctlMsg) sendResult {
	if _, err := router.Send(m.worker, zmq.SNDMORE|zmq.DONTWAIT); err != nil {
		// With ROUTER_MANDATORY a full queue is EAGAIN at the first
		// frame, before anything of the message went out.
		if zmq.AsErrno(err) == zmq.Errno(syscallEAGAIN) {
			return queueFull
		}
		return notSent
	}
	if m.body != nil {
		if err := zmqio.SendOwned(router, m.body, m.bodyLen, zmq.DONTWAIT); err != nil {
			return notSent
		}
		c.countUp(m.bodyLen)
		return sent
	}
	if _, err := zmqio.SendBytes(router, m.payload, zmq.DONTWAIT); err != nil {
		return notSent
	}
	c.countUp(len(m.payload))
	return sent
}

// sendTo sends m to its worker and says whether libzmq took it. Control
// messages other than REQ are advisory: one that cannot go is dropped.
func (c *controlPlane) sendTo(router *zmq.Socket, m ctlMsg) bool {
	if c.trySend(router, m) != sent {
		m.release()
		return false
	}
	return true
}

// maxStalledReqs bounds the REQs held for workers whose queues are full.
const maxStalledReqs = outQueueSize

// deliverReq sends a request addressed to one worker (affinity, WebSocket
// messages, broadcast). A worker that is only behind (its queue full) is not
// a worker gone: the REQ waits, in order behind any earlier one for that
// worker, until libzmq takes it (retryStalled). A worker that is gone fails
// the exchange, which goes back to load balancing.
func (c *controlPlane) deliverReq(router *zmq.Socket, m ctlMsg) {
	if len(c.stalled[m.worker]) > 0 {
		c.stall(m)
		return
	}
	switch c.trySend(router, m) {
	case queueFull:
		c.stall(m)
	case notSent:
		c.undeliverable(m, errAddresseeGone)
	}
}

func (c *controlPlane) stall(m ctlMsg) {
	if c.stalledN >= maxStalledReqs {
		c.undeliverable(m, errReqNotQueued)
		return
	}
	if c.stalled == nil {
		c.stalled = make(map[string][]ctlMsg)
	}
	c.stalled[m.worker] = append(c.stalled[m.worker], m)
	c.stalledN++
}

// retryStalled sends held REQs, each worker's in order, as far as libzmq
// takes them. The owner calls it on every wake-up: a worker that reads
// frees its pipe, which signals the socket.
func (c *controlPlane) retryStalled(router *zmq.Socket) {
	if c.stalledN == 0 {
		return
	}
	for wk, q := range c.stalled {
		i := 0
		for ; i < len(q); i++ {
			r := c.trySend(router, q[i])
			if r == queueFull {
				break
			}
			if r == notSent {
				c.undeliverable(q[i], errAddresseeGone)
			}
		}
		c.stalledN -= i
		if i == len(q) {
			delete(c.stalled, wk)
		} else {
			clear(q[:i])
			c.stalled[wk] = q[i:]
		}
	}
}

// deliverUpload sends one message of a streamed upload. A chunk (or the
// body's end) that cannot be sent (the worker's queue is full, or it left)
// is not the end of the body: the exchange fails at once (the client gets 502, never a reply
// the worker made of part of the body), the chunks after it are dropped,
// and the end the pump sends becomes BODYERR, so the worker never takes a
// truncated body for a complete one. Runs on the owner, which sees an
// upload's messages in order.
func (c *controlPlane) deliverUpload(router *zmq.Socket, m ctlMsg) {
	flow := m.upload.upload
	end := m.body == nil // BODYEND or BODYERR
	if flow.lost.Load() {
		if !end {
			m.release()
			return
		}
		m.payload = zmqx.AppendBodyErr(m.payload[:0], m.upload.id)
	}
	// A refused end fails it too: the worker would wait for it for good.
	if !c.sendTo(router, m) {
		flow.lost.Store(true)
		m.upload.fail(errUploadLost)
	}
}

// ctlScratch holds the buffers receive reads into. Each is an allocation
// of its own: cgo checks the whole object a buffer lies in for Go pointers.
type ctlScratch struct {
	id      []byte
	payload []byte
	extra   []byte
	user    string // the last sender's ZAP user id, reused while it repeats
}

// undeliverable fails with cause the exchange of a REQ that was not sent:
// errAddresseeGone when libzmq could not route it (the worker has gone),
// errReqNotQueued when the queues towards a live worker were full. It
// releases msg (any message that was not sent may come here).
func (c *controlPlane) undeliverable(msg ctlMsg, cause error) {
	defer msg.release()
	m, err := zmqx.Parse(msg.bytes())
	if err != nil || m.Verb != zmqx.Req {
		return
	}
	// "UUID CONNID ..."
	_, rest, _ := bytes.Cut(m.Data, []byte{' '})
	idBytes, _, _ := bytes.Cut(rest, []byte{' '})
	id, ok := mongrel2.ParseUint(idBytes)
	if !ok {
		return
	}
	if ex := c.t.lookup(id); ex != nil {
		ex.fail(cause)
	}
}

// receive reads every pending [identity, payload] message. Workers send
// short messages; a payload larger than the scratch buffer is received into
// one of its own.
func (c *controlPlane) receive(in *zmqio.UserReceiver, rs *ctlScratch) {
	for {
		id, more, err := in.RecvInto(rs.id, zmq.DONTWAIT)
		if err != nil {
			return
		}
		if !more {
			continue
		}
		payload, more, user, err := in.RecvIntoUser(rs.payload, 0, rs.user)
		rs.user = user
		if err != nil {
			return
		}
		for more {
			// Extra frames are not part of zmqx/1.
			if _, more, err = in.RecvInto(rs.extra, 0); err != nil {
				return
			}
		}
		c.countDown(len(payload))
		worker := string(id)
		if c.t.auth != nil {
			c.conns.note(in.FD(), user, worker)
		}
		c.handleMsg(worker, user, in.Addr(), payload)
	}
}

func (c *controlPlane) handle(worker string, payload []byte) { c.handleFrom(worker, "", payload) }

// handleFrom handles a message from worker, sent with CURVE key key ("":
// without CURVE).
func (c *controlPlane) handleFrom(worker, key string, payload []byte) {
	c.handleMsg(worker, key, "", payload)
}

// handleMsg is handleFrom for a message that came from addr (the peer's
// address, read from the HELLO that opens a connection; "" otherwise).
func (c *controlPlane) handleMsg(worker, key, addr string, payload []byte) {
	if !c.admit(worker, key, payload) {
		return
	}
	m, err := zmqx.Parse(payload)
	now := time.Now()
	c.mu.Lock()
	wi := c.workers[worker]
	if wi == nil {
		wi = &workerInfo{lastProgress: now}
		c.workers[worker] = wi
		c.noteJoined(worker, wi, now)
		c.logger.Info("worker joined the control channel", zap.String("worker", worker))
	}
	// Any message, even one we cannot read, says the worker lives.
	wi.lastSeen = now
	if err != nil {
		c.mu.Unlock()
		c.logger.Debug("ignoring control message", zap.String("worker", worker),
			zap.ByteString("msg", payload[:min(len(payload), 64)]), zap.Error(err))
		return
	}
	switch m.Verb {
	case zmqx.Hello:
		// Answered on this connection before anything else (sendAnswers):
		// until then the worker counts it as not heard.
		c.welcome = append(c.welcome, worker)
		wi.maxConcurrent = int(m.N)
		wi.draining = false
		if addr != "" {
			wi.remoteAddr = addr
		}
	case zmqx.Bye:
		wi.draining, wi.since = true, now
	}
	repause := m.Verb == zmqx.Hello && (wi.paused || wi.drained)
	c.mu.Unlock()
	if repause {
		// A new connection of a worker we had paused: the pause was sent
		// on the old one, which the worker forgets.
		c.send(worker, zmqx.AppendPause(nil))
	}

	switch m.Verb {
	case zmqx.Ack:
		c.takeAcks(worker, key, wi, m.IDs)
	case zmqx.Nack:
		// A paused worker hands back requests it did not start; they go
		// to another worker, safely for every method.
		for id, rest := zmqx.NextID(m.IDs); id != nil; id, rest = zmqx.NextID(rest) {
			n, ok := mongrel2.ParseUint(id)
			if !ok {
				continue
			}
			if ex := c.t.lookup(n); ex != nil && c.mayHold(ex, worker, key, zmqx.Nack) && ex.giveUpDispatch() {
				ex.fail(errNotTaken)
			}
		}
	case zmqx.UploadCredit:
		// The worker's handler read that much of a streamed upload.
		id, ok := mongrel2.ParseUint(m.ID)
		if !ok {
			return
		}
		if ex := c.t.lookup(id); ex != nil && ex.upload != nil && c.mayHold(ex, worker, key, zmqx.UploadCredit) {
			ex.upload.grant(m.N)
		}
	case zmqx.Reset:
		// The worker was silent past the liveness bound (frozen, starved)
		// and has cancelled every request it had acknowledged, as we would
		// have declared it lost: fail them here too, now, whether or not
		// the sweep got to it first.
		if n := c.t.failWorker(worker, errWorkerLost); n > 0 {
			c.logger.Warn("worker lost: it reports a lapse of its liveness lease",
				zap.String("worker", worker), zap.Int("requests_failed", n))
		}
	case zmqx.Heartbeat, zmqx.Hello, zmqx.Bye:
	default:
		c.logger.Debug("ignoring control message meant for workers", zap.String("worker", worker), zap.Stringer("verb", m.Verb))
	}
}

// takeAcks records worker as the holder of each request its ACK names
// (several ids may come in one ACK, space separated), and queues one
// CONFIRM for those marked zmqx.HeaderConfirm that it now holds.
func (c *controlPlane) takeAcks(worker, key string, wi *workerInfo, ids []byte) {
	var confirm []byte
	for id, rest := zmqx.NextID(ids); id != nil; id, rest = zmqx.NextID(rest) {
		n, ok := mongrel2.ParseUint(id)
		if !ok {
			continue
		}
		c.acks.Add(1)
		ex := c.t.lookup(n)
		if ex == nil {
			// The exchange is over: either its reply beat the ACK, or
			// its client left before the worker was known and the
			// Mongrel2 notice went to some other worker. Tell the one
			// that took it (a no-op if it has finished).
			c.disconnect(worker, n)
			c.t.pins.lateAck(n, worker, c.isLive)
			continue
		}
		if !c.mayHold(ex, worker, key, zmqx.Ack) {
			continue
		}
		switch ex.setWorker(worker, wi) {
		case ackRefused:
			// Sent again under a new id: this copy must not run.
			c.disconnect(worker, n)
			continue
		case ackAbandoned:
			// Its client left before this ACK: the notice went to any
			// worker, perhaps not this one.
			c.disconnect(worker, n)
		case ackConfirm:
			if confirm == nil {
				confirm = zmqx.AppendConfirm(make([]byte, 0, 64))
			}
			confirm = zmqx.AppendUintID(confirm, n)
		}
		if session := ex.sessionKey(); session != "" {
			c.t.pins.pinFirst(session, worker, c.isLive)
		}
	}
	if confirm != nil {
		c.mu.Lock()
		c.confirms = append(c.confirms, ctlMsg{worker: worker, payload: confirm})
		c.mu.Unlock()
	}
}

// sweepInterval is how often silent workers are looked for; with
// workerDeadAfter it bounds detection at about 1.1 s.
const sweepInterval = 100 * time.Millisecond

var errWorkerLost = errors.New("the worker that took the request went silent (dead, frozen or cut off)")

// sweep forgets workers silent for workerDeadAfter and fails the requests
// they had taken, so that clients hear at once rather than at the timeout.
func (c *controlPlane) sweep(now time.Time) {
	type gone struct {
		id      string
		drained bool
	}
	var lost []gone
	c.t.pins.prune(now)
	c.reapSilent(now)
	c.judgeReplyGone(now)
	grace := max(2*time.Second, 5*c.t.cfg.heartbeat+time.Second)
	c.mu.Lock()
	if c.lost == nil {
		c.lost = map[string]time.Time{}
	}
	for id, at := range c.lost {
		if now.Sub(at) > grace {
			delete(c.lost, id)
		}
	}
	for id, wi := range c.workers {
		if now.Sub(wi.lastSeen) > workerDeadAfter {
			lost = append(lost, gone{id, wi.draining})
			c.noteLost(id, wi, now)
			delete(c.workers, id)
			c.lost[id] = now
			c.ids.forget(id)
		}
	}
	c.mu.Unlock()
	if d := time.Duration(c.hungAfter.Load()); d > 0 {
		c.sweepHung(now, d)
	}
	for _, g := range lost {
		n := c.t.failWorker(g.id, errWorkerLost)
		if g.drained && n == 0 {
			c.logger.Info("worker left after draining", zap.String("worker", g.id))
			continue
		}
		c.logger.Warn("worker lost: no control message within the liveness bound",
			zap.String("worker", g.id), zap.Duration("bound", workerDeadAfter), zap.Int("requests_failed", n))
	}
}

// coversPeers reports whether every worker connected to the request socket
// speaks the control channel, so that all of them honour dispatch
// deadlines. A Mongrel2 handler among them would not, and a request it
// runs late must not be sent twice.
func (c *controlPlane) coversPeers() bool {
	if until := c.t.redialUntil.Load(); until != 0 && time.Now().UnixNano() < until {
		// Caddy itself just closed request connections of zmqx workers
		// (dropKeys): until they dial again the count below says little
		// (often no connection at all), and a request that PUSH still
		// hands to a closing connection is lost with it. With a dispatch
		// deadline it is sent again; the workers dialling back are the
		// ones that were covered.
		return true
	}
	// All connections, those in their handshake too: they are about to
	// take requests. Not those whose handshake failed: they never will.
	peers := c.t.takers.Load()
	if peers <= 0 {
		return false
	}
	cutoff := time.Now().Add(-workerDeadAfter)
	n := int64(0)
	c.mu.Lock()
	for _, wi := range c.workers {
		if wi.lastSeen.After(cutoff) {
			n++
		}
	}
	n += int64(len(c.lost))
	c.mu.Unlock()
	return n >= peers
}

// isLive reports whether worker was heard from within workerDeadAfter, is
// not draining, and is not paused as hung.
func (c *controlPlane) isLive(worker string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	wi := c.workers[worker]
	return wi != nil && !wi.draining && !wi.drained && !wi.paused && time.Since(wi.lastSeen) <= workerDeadAfter
}
