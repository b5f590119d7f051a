package caddyzmq

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	zmq "github.com/pebbe/zmq4"
	"go.uber.org/zap"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/zmqio"
)

// transports holds the bound socket pairs, keyed by endpoints and sender, so
// that a config reload that keeps the same endpoints reuses the sockets
// instead of failing with "address already in use": Caddy provisions the new
// config before it stops the old one.
var transports = caddy.NewUsagePool()

// zmqContext is the one libzmq context of the process (each context starts
// I/O threads; sockets come and go with configs, the context stays).
var zmqContext = sync.OnceValues(zmqio.NewContext)

// recvPollInterval bounds how long an owner blocked in a receive or poll
// (the control plane, the socket monitor) takes to notice it must stop,
// and how long the reply owner backs off after a socket error.
const recvPollInterval = 100 * time.Millisecond

// outQueueSize is the depth of the Go channel in front of the request
// socket's owner. A full channel means libzmq cannot keep up either; the
// client then gets 503 at once rather than waiting.
const outQueueSize = 4096

var (
	errNoWorker  = errors.New("no worker is connected, or every worker's queue is full")
	errQueueFull = errors.New("request queue is full")
	errStopped   = errors.New("transport stopped")
)

// transportConfig is what identifies a transport; equal configs share one.
type transportConfig struct {
	requestEndpoint string
	replyEndpoint   string
	// connect, when set, makes Caddy CONNECT to workers that bind (one
	// request and one reply endpoint each) instead of binding itself.
	connect         string // "req rep;req rep;..." (a string keeps the struct comparable)
	controlEndpoint string
	sender          string
	heartbeat       time.Duration
	// curveSecret is the front end's CURVE secret key (Z85); empty: no
	// CURVE (curve.go).
	curveSecret string
	// maxReplyFrame caps a reply frame (ZMQ_MAXMSGSIZE); 0: no cap.
	maxReplyFrame int64
}

// key is what makes two configs share sockets: the endpoints Caddy binds.
// Settings that do not change sockets live on the handler, so a reload may
// change them freely.
func (c transportConfig) key() string {
	if c.connect != "" {
		return "connect|" + c.connect
	}
	return c.requestEndpoint + "|" + c.replyEndpoint
}

// attach binds the socket to endpoint, or, in connect mode, connects it to
// the endpoint of each worker (which = 0 request, 1 reply).
func (c transportConfig) attach(sock *zmq.Socket, endpoint string, which int) error {
	if c.connect == "" {
		if err := sock.Bind(endpoint); err != nil {
			return fmt.Errorf("binding %s: %w", endpoint, err)
		}
		return nil
	}
	for _, pair := range strings.Split(c.connect, ";") {
		eps := strings.Fields(pair)
		if err := sock.Connect(eps[which]); err != nil {
			return fmt.Errorf("connecting to worker endpoint %s: %w", eps[which], err)
		}
	}
	return nil
}

// outMsg is one frame for the request socket. ex is nil for notices that
// need no answer (disconnects).
type outMsg struct {
	buf *[]byte
	ex  *exchange
	// body, when set, is the message instead of buf: its first bodyLen
	// bytes, in C memory that libzmq sends without a copy (a large
	// WebSocket message read straight into it).
	body    *zmqio.CBuf
	bodyLen int
	// queued, when set, counts the messages of a WebSocket in the queue;
	// the owner counts this one out once it is sent or dropped.
	queued *atomic.Int32
}

// transport owns one bound PUSH socket (requests) and one bound SUB socket
// (replies). Each socket lives its whole life in one goroutine: the send
// owner is fed by a channel, the receive owner dispatches replies to the
// waiting exchanges.
type transport struct {
	cfg    transportConfig
	logger *zap.Logger

	out  chan outMsg
	quit chan struct{}
	wg   sync.WaitGroup
	// sendMu is held by the request socket's owner while it sends, and
	// lets a WebSocket's reader send on reqSock itself while the owner is
	// idle (sendDirect); reqSock is nil before and after the owner's life.
	sendMu  sync.Mutex
	reqSock *zmq.Socket

	// control is nil unless a control endpoint is configured.
	control *controlPlane
	// pins maps sessions to workers (affinity); it lives with the sockets
	// so that pins survive config reloads.
	pins *pinTable

	mu      sync.RWMutex
	pending map[uint64]*exchange
	ids     *rand.ChaCha8 // connection ids (connid.go), under mu

	// websockets counts open WebSockets, which Destruct lets close.
	websockets socketCount

	// peers counts the workers connected to the request socket that can
	// take a request (their handshake ended), conns all connected ones,
	// from libzmq's socket monitor (see peerCounter); a pool with no
	// peers is skipped.
	peers, conns atomic.Int64
	// takers is conns without the connections whose handshake failed
	// (peerCounter.takers): the workers coversPeers must account for.
	takers atomic.Int64

	// auth is the allow-list of a CURVE transport (nil without CURVE),
	// served by zap (curve.go).
	auth *authorizer
	// reqConns follows the request socket's connections with their
	// addresses (/zmq/pools lists them; with CURVE, dropKeys closes those
	// of a removed key's hosts), repConns the reply socket's with CURVE
	// (peerconns.go).
	reqConns, repConns connTracker
	// redialUntil (unix ns): requests finding no worker wait until then
	// for workers to dial again (dropKeys closed their connections).
	redialUntil atomic.Int64
	zap         *zapHandler
	// warn rate-limits repeated warnings about what peers send.
	warn warnLimiter

	// stats, read by metrics and tests.
	sent, sendFailed, replies, unknownReplies, badReplies atomic.Uint64
	// wsDirectFrames: WebSocket frames the reply socket's goroutine wrote
	// to the client, whole or in part (websocket_direct.go); read by tests.
	wsDirectFrames atomic.Uint64
	// bytesUp, bytesDown: every message to and from workers, on every
	// socket; refusedHandshakes: connections refused at the security
	// handshake. For metrics (metrics.go); they outlive configs.
	bytesUp, bytesDown, refusedHandshakes atomic.Uint64
}

func newTransport(cfg transportConfig, logger *zap.Logger) (*transport, error) {
	zctx, err := zmqContext()
	if err != nil {
		return nil, fmt.Errorf("creating ZeroMQ context: %w", err)
	}
	t := &transport{
		cfg:     cfg,
		logger:  logger,
		out:     make(chan outMsg, outQueueSize),
		quit:    make(chan struct{}),
		pending: make(map[uint64]*exchange),
		pins:    newPinTable(defaultAffinityTTL),
		ids:     newConnIDSource(),
	}
	if err := t.startCurve(zctx); err != nil {
		return nil, err
	}

	owners := 2
	ready := make(chan error, 3)
	t.wg.Add(2)
	go t.runSender(zctx, ready)
	go t.runReceiver(zctx, ready)
	if cfg.controlEndpoint != "" {
		owners++
		t.control = newControlPlane(t, cfg.controlEndpoint)
		t.wg.Add(1)
		go t.control.run(zctx, ready, t.quit, &t.wg)
	}
	var firstErr error
	for range owners {
		if err := <-ready; err != nil && firstErr == nil {
			firstErr = err
		}
	}
	if firstErr != nil {
		close(t.quit)
		t.wg.Wait()
		t.stopCurve()
		return nil, firstErr
	}
	return t, nil
}

// Destruct implements caddy.Destructor: the last config using these
// endpoints is gone.
func (t *transport) Destruct() error {
	close(t.quit)
	t.wg.Wait()
	t.stopCurve()
	t.mu.Lock()
	for _, ex := range t.pending {
		ex.fail(errStopped)
	}
	t.mu.Unlock()
	t.awaitWebSockets(wsShutdownWait)
	return nil
}

func (t *transport) configure(s *zmq.Socket) error {
	if err := s.SetLinger(0); err != nil {
		return err
	}
	if err := t.secure(s); err != nil {
		return err
	}
	if err := s.SetHandshakeIvl(handshakeIvl); err != nil {
		return err
	}
	if t.cfg.heartbeat > 0 {
		// ZMTP heartbeats let libzmq drop a dead or frozen peer's pipe, so
		// PUSH stops handing it work.
		if err := s.SetHeartbeatIvl(t.cfg.heartbeat); err != nil {
			return err
		}
		if err := s.SetHeartbeatTimeout(5 * t.cfg.heartbeat); err != nil {
			return err
		}
		if err := s.SetHeartbeatTtl(5 * t.cfg.heartbeat); err != nil {
			return err
		}
	}
	return nil
}

func (t *transport) runSender(zctx *zmq.Context, ready chan<- error) {
	defer t.wg.Done()
	sock, err := zctx.NewSocket(zmq.PUSH)
	if err != nil {
		ready <- fmt.Errorf("creating request socket: %w", err)
		return
	}
	defer sock.Close()
	if err := t.configure(sock); err != nil {
		ready <- fmt.Errorf("configuring request socket: %w", err)
		return
	}
	stopMonitor, err := t.startMonitor(zctx, sock)
	if err != nil {
		ready <- fmt.Errorf("monitoring request socket: %w", err)
		return
	}
	defer stopMonitor()
	if t.cfg.connect != "" {
		// Queue only toward workers whose connection is up, so that with
		// none up the send fails at once (503) instead of waiting.
		if err := sock.SetImmediate(true); err != nil {
			ready <- fmt.Errorf("configuring request socket: %w", err)
			return
		}
	}
	if err := t.cfg.attach(sock, t.cfg.requestEndpoint, 0); err != nil {
		ready <- fmt.Errorf("request socket: %w", err)
		return
	}
	t.sendMu.Lock()
	t.reqSock = sock
	t.sendMu.Unlock()
	ready <- nil
	for {
		select {
		case m := <-t.out:
			t.sendMu.Lock()
			t.send(sock, m)
			takeQueued(t.out, func(m outMsg) { t.send(sock, m) })
			t.sendMu.Unlock()
		case <-t.quit:
			t.sendMu.Lock()
			t.reqSock = nil
			t.sendMu.Unlock()
			for {
				select {
				case m := <-t.out:
					if m.ex != nil {
						m.ex.fail(errStopped)
					}
					m.release()
				default:
					return
				}
			}
		}
	}
}

func (t *transport) send(sock *zmq.Socket, m outMsg) {
	defer m.countOut()
	err := m.sendOn(sock)
	if err != nil && zmq.AsErrno(err) == zmq.Errno(syscallEAGAIN) {
		// The pipe of a worker that just finished its handshake arrives as
		// a command to the socket, which a send processes at most once a
		// millisecond or so (libzmq throttles it); reading ZMQ_EVENTS
		// processes it now. Only then does EAGAIN mean no worker.
		_, _ = sock.GetEvents()
		err = m.sendOn(sock)
	}
	if err == nil {
		t.bytesUp.Add(uint64(m.size()))
	}
	requestFrames.put(m.buf)
	if err != nil {
		m.body.Free() // still ours: SendOwned failed
	}
	if err == nil {
		t.sent.Add(1)
		return
	}
	t.sendFailed.Add(1)
	if m.ex == nil {
		return
	}
	if zmq.AsErrno(err) == zmq.Errno(syscallEAGAIN) {
		m.ex.fail(errNoWorker)
		return
	}
	m.ex.fail(fmt.Errorf("sending request: %w", err))
}

func (m outMsg) sendOn(sock *zmq.Socket) error {
	if m.body != nil {
		return zmqio.SendOwned(sock, m.body, m.bodyLen, zmq.DONTWAIT)
	}
	_, err := zmqio.SendBytes(sock, *m.buf, zmq.DONTWAIT)
	return err
}

// release gives back what m holds when it will not be sent.
func (m outMsg) release() {
	m.countOut()
	requestFrames.put(m.buf)
	m.body.Free()
}

// countOut takes m off its WebSocket's count of queued messages.
func (m outMsg) countOut() {
	if m.queued != nil {
		m.queued.Add(-1)
	}
}

// sendDirect sends m on the request socket from the calling goroutine if
// the socket's owner is idle and the send succeeds at once; otherwise m is
// still the caller's, for the owner's queue. Its caller must keep order:
// only while none of its earlier messages waits in the queue.
func (t *transport) sendDirect(m outMsg) bool {
	if !t.sendMu.TryLock() {
		return false
	}
	defer t.sendMu.Unlock()
	if t.reqSock == nil || m.sendOn(t.reqSock) != nil {
		return false // the owner sends it, and reports what stays wrong
	}
	t.bytesUp.Add(uint64(m.size()))
	t.sent.Add(1)
	requestFrames.put(m.buf)
	return true
}

func (m outMsg) size() int {
	if m.body != nil {
		return m.bodyLen
	}
	return len(*m.buf)
}

func (t *transport) runReceiver(zctx *zmq.Context, ready chan<- error) {
	defer t.wg.Done()
	sock, err := zctx.NewSocket(zmq.SUB)
	if err != nil {
		ready <- fmt.Errorf("creating reply socket: %w", err)
		return
	}
	defer sock.Close()
	if err := t.configure(sock); err != nil {
		ready <- fmt.Errorf("configuring reply socket: %w", err)
		return
	}
	// The trailing space keeps a sender that is a prefix of another's from
	// taking its replies.
	if err := sock.SetSubscribe(t.cfg.sender + " "); err != nil {
		ready <- fmt.Errorf("subscribing reply socket: %w", err)
		return
	}
	stopWatch, err := t.watchHandshakes(zctx, sock, &t.repConns, t.replyConnGone)
	if err != nil {
		ready <- fmt.Errorf("reply socket: %w", err)
		return
	}
	defer stopWatch()
	if err := t.cfg.attach(sock, t.cfg.replyEndpoint, 1); err != nil {
		ready <- fmt.Errorf("reply socket: %w", err)
		return
	}
	// With CURVE each reply says which worker key sent it (curve.go).
	urcv, err := zmqio.NewUserReceiver(sock)
	if err != nil {
		ready <- fmt.Errorf("reply socket: %w", err)
		return
	}
	defer urcv.Close()
	// With CURVE, which key sends on which connection (peerconns.go).
	urcv.ReadFD(t.auth != nil)
	rcv := urcv.Receiver
	rd, err := zmqio.NewReadiness(sock)
	if err != nil {
		ready <- fmt.Errorf("reply socket: %w", err)
		return
	}
	defer rd.Close()
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case <-t.quit:
			rd.Interrupt()
		case <-stopped:
		}
	}()
	ready <- nil
	// Receive without blocking while replies are there; in between, park
	// in the network poller (zmqio explains why). A part that does not
	// fit scratch is kept (scratch holds keptFrameMin bytes), so RecvKeep
	// never reports ErrTooBig here.
	scratch := getFrame(bigFrameClass, 0)
	var (
		part []byte
		kept *zmqio.Msg
		rerr error
		user string
		fd   = -1
	)
	recv := func() bool {
		if t.auth != nil {
			last := user
			part, kept, _, user, rerr = urcv.RecvKeepUser(scratch.buf, keptFrameMin, zmq.DONTWAIT, user)
			// Noted when the connection or key changes, not per reply.
			if rerr == nil && (urcv.FD() != fd || user != last) {
				fd = urcv.FD()
				t.repConns.note(fd, user, "")
			}
		} else {
			part, kept, _, rerr = rcv.RecvKeep(scratch.buf, keptFrameMin, zmq.DONTWAIT)
		}
		return zmq.AsErrno(rerr) != zmq.Errno(syscallEAGAIN)
	}
	for {
		if werr := rd.Await(recv); werr != nil {
			if errors.Is(werr, zmqio.ErrInterrupted) {
				return
			}
			t.logger.Error("waiting for replies", zap.Error(werr))
			if !sleepOrQuit(t.quit, recvPollInterval) {
				return
			}
			continue
		}
		if rerr != nil {
			t.logger.Error("receiving reply", zap.Error(rerr))
			if !sleepOrQuit(t.quit, recvPollInterval) {
				return
			}
			continue
		}
		var f *replyFrame
		if kept != nil {
			f = keptFrame(kept)
		} else {
			f, scratch = frameOf(part, scratch)
		}
		t.dispatchFrom(f, user)
		select {
		case <-t.quit:
			return
		default:
		}
	}
}

// frameOf turns a part received into scratch (a buffer of the largest
// class) into a frame: small parts are copied into a buffer of their size
// class, and scratch is kept; a big part keeps scratch, and a new one is
// taken.
func frameOf(part []byte, scratch *replyFrame) (f, next *replyFrame) {
	if len(part) <= frameClasses[bigFrameClass-1] {
		f = newFrame(len(part))
		copy(f.buf, part)
		return f, scratch
	}
	scratch.buf = part
	return scratch, getFrame(bigFrameClass, 0)
}

// takeQueued hands f what is already queued on ch, up to maxBurst values,
// without waiting: an owner woken for one message sends those that came
// meanwhile before it goes back to its select.
func takeQueued[T any](ch <-chan T, f func(T)) {
	for range maxBurst {
		select {
		case v := <-ch:
			f(v)
		default:
			return
		}
	}
}

// maxBurst bounds a takeQueued burst, so that an owner also gets to its
// other duties under a steady stream.
const maxBurst = 64

// sleepOrQuit waits d, unless quit closes first (false).
func sleepOrQuit(quit <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-quit:
		return false
	case <-t.C:
		return true
	}
}

var monitorSeq atomic.Uint64

// stopMonitorFunc is how sock's owner ends a monitor reader: it stops
// libzmq's monitor first, then lets the reader go, and waits for it.
// libzmq sends monitor events with a blocking send from the thread that
// emits them (an I/O thread of the context for connection events): an
// event for a PAIR whose reader has gone would block that thread, and with
// it every socket of the context. Only sock's owner may call it, before it
// closes sock.
func stopMonitorFunc(sock *zmq.Socket, stop chan struct{}, done <-chan struct{}) func() {
	return func() {
		_ = sock.Monitor("", 0)
		close(stop)
		<-done
	}
}

// startMonitor counts the peers of sock through libzmq's socket monitor.
// The reader owns its PAIR socket and is connected before sock binds, so no
// event is missed. sock's owner calls the stop function it returns before
// closing sock (stopMonitorFunc).
func (t *transport) startMonitor(zctx *zmq.Context, sock *zmq.Socket) (func(), error) {
	addr := "inproc://caddy-zmq-monitor-" + strconv.FormatUint(monitorSeq.Add(1), 10)
	if err := sock.Monitor(addr, monitoredEvents); err != nil {
		return nil, err
	}
	done, stop := make(chan struct{}), make(chan struct{})
	ready := make(chan error, 1)
	go func() {
		defer close(done)
		mon, err := zctx.NewSocket(zmq.PAIR)
		if err != nil {
			ready <- err
			return
		}
		defer mon.Close()
		_ = mon.SetLinger(0)
		_ = mon.SetRcvtimeo(recvPollInterval)
		if err := mon.Connect(addr); err != nil {
			ready <- err
			return
		}
		ready <- nil
		var count peerCounter
		for {
			ev, endpoint, value, err := mon.RecvEvent(0)
			now := time.Now()
			if err == nil {
				count.event(ev, now)
				t.reqConns.event(ev, value, now)
				t.noteHandshake(ev, endpoint, value)
			}
			count.settle(now)
			t.conns.Store(count.conns)
			t.takers.Store(count.takers())
			t.peers.Store(count.ready)
			if err == nil {
				continue
			}
			select {
			case <-stop:
				return
			default:
			}
		}
	}()
	if err := <-ready; err != nil {
		<-done
		return nil, err
	}
	return stopMonitorFunc(sock, stop, done), nil
}

// dispatch hands one reply frame to every exchange it names. The body is
// shared, read-only, by all of them; each holds a reference to f, and
// dispatch drops the one it was given.
func (t *transport) dispatch(f *replyFrame) { t.dispatchFrom(f, "") }

// dispatchFrom is dispatch for a frame sent by the worker whose CURVE key
// is user ("" without CURVE): a frame for a request that another worker
// holds is dropped.
func (t *transport) dispatchFrom(f *replyFrame, user string) {
	defer f.release()
	msg := f.buf
	t.bytesDown.Add(uint64(len(msg)))
	sender, ids, body, err := mongrel2.ParseReply(msg)
	if err != nil {
		t.badReplies.Add(1)
		t.warnPeer("dropping malformed reply", user, zap.Error(err), zap.Int("size", len(msg)))
		return
	}
	if string(sender) != t.cfg.sender {
		t.badReplies.Add(1)
		t.warnPeer("dropping reply for another sender", user, zap.ByteString("sender", sender))
		return
	}
	if user != "" && !t.auth.allows(user) {
		// Its key left the allow-list by reload (ctlguard.go closes its
		// connection; this is what it sent before that).
		t.badReplies.Add(1)
		t.warnPeer("dropping a reply from a worker whose key is no longer allowed", user, zap.Int("size", len(msg)))
		return
	}
	t.replies.Add(1)
	// A frame for one connection may be written to its client at once
	// (websocket_direct.go); one for many (a broadcast) is left to each
	// socket's relay, so that the lock below is not held through a write
	// per socket, and those writes run in parallel.
	_, more := mongrel2.NextID(ids)
	direct := len(more) == 0
	t.mu.RLock()
	for id, rest := mongrel2.NextID(ids); id != nil; id, rest = mongrel2.NextID(rest) {
		n, _ := mongrel2.ParseUint(id)
		ex := t.pending[n]
		if ex == nil {
			t.unknownReplies.Add(1)
			if c := t.logger.Check(zap.DebugLevel, "reply for unknown or finished connection"); c != nil {
				c.Write(zap.ByteString("conn_id", id))
			}
			continue
		}
		if !ex.holderOK(user) {
			t.badReplies.Add(1)
			t.warnPeer("dropping a reply from a worker that does not hold the request", user, zap.ByteString("conn_id", id))
			continue
		}
		ex.deliver(body, f, direct)
	}
	t.mu.RUnlock()
}

// register creates the exchange for one HTTP request under a fresh id.
func (t *transport) register(maxBuffered int, retryable bool) *exchange {
	ex := newExchange(0, maxBuffered)
	ex.retryable = retryable
	t.mu.Lock()
	ex.id = t.nextConnID()
	t.pending[ex.id] = ex
	t.mu.Unlock()
	return ex
}

// lookup returns the pending exchange of connection id, or nil.
func (t *transport) lookup(id uint64) *exchange {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.pending[id]
}

// failWorker fails every pending exchange that worker had acknowledged.
func (t *transport) failWorker(worker string, err error) int {
	n := 0
	t.mu.RLock()
	for _, ex := range t.pending {
		if ex.workerID() == worker || ex.awaitsBroadcastAck(worker) {
			ex.fail(err)
			n++
		}
	}
	t.mu.RUnlock()
	return n
}

func (t *transport) unregister(ex *exchange) {
	t.mu.Lock()
	delete(t.pending, ex.id)
	t.mu.Unlock()
	// Nothing is delivered to ex from here on (dispatch delivers under the
	// read lock). Frames still queued, of a request that ended early (its
	// client left, its reply failed), are released now: a kept frame is
	// libzmq's memory, and waiting for the garbage collector to free it
	// left an idle Caddy holding the in-flight window of every abandoned
	// download.
	ex.releaseQueued()
}

// submit queues a frame for the request socket without blocking.
func (t *transport) submit(buf *[]byte, ex *exchange) error {
	select {
	case t.out <- outMsg{buf: buf, ex: ex}:
		return nil
	case <-t.quit:
		requestFrames.put(buf)
		return errStopped
	default:
		requestFrames.put(buf)
		return errQueueFull
	}
}

// notifyDisconnect tells the worker that the client of ex went away: over
// the control channel when a worker acknowledged the request, else with
// Mongrel2's disconnect notice, which PUSH hands to some worker.
func (t *transport) notifyDisconnect(ex *exchange) {
	w := ex.abandon()
	if w == "" {
		w = ex.addressed
	}
	if w != "" && t.control != nil {
		t.control.disconnect(w, ex.id)
		return
	}
	id := ex.id
	buf := requestFrames.get()
	*buf = mongrel2.AppendDisconnect(*buf, t.cfg.sender, string(mongrel2.AppendUint(nil, id)))
	_ = t.submit(buf, nil)
}

// exchange is the meeting point of one HTTP request and the reply frames
// for its connection id. The receive owner never blocks on it: frames are
// queued, and the request's goroutine is woken through signal.
type exchange struct {
	id     uint64
	signal chan struct{}

	// acked is closed when a worker acknowledges the request. Set by
	// expectAck, under mu: the exchange is registered, and so visible to
	// the control goroutine, before the request is sent.
	acked chan struct{}
	// upload is the credit of a streamed upload (nil otherwise).
	upload *uploadFlow

	// session is the affinity session of the request, if any: its ACK
	// pins the session. Set by expectAck, under mu.
	session string
	// addressed is the worker a pinned request was sent to by REQ; it
	// gets the disconnect even before its ACK arrives.
	addressed string
	// broadcastTo, guarded by mu, is the worker a broadcast request was
	// sent to: it fails with that worker even unacknowledged (broadcast.go).
	broadcastTo string

	// retryable: an idempotent request that may still be retried; only
	// those are taken back from a hung worker (hung.go).
	retryable bool

	mu     sync.Mutex
	worker string // control-channel identity of the worker that took it
	// abandoned: the client went away (notifyDisconnect) before a worker
	// was known; a later ACK is answered with DISCONNECT.
	abandoned bool
	// givenUp: no worker acknowledged the request by its dispatch
	// deadline and it is being sent again under a new id: a later ACK of
	// this one is refused (answered with DISCONNECT, never CONFIRM).
	givenUp bool
	// confirm: the request carries zmqx.HeaderConfirm, so the worker
	// starts it only once its ACK is answered with CONFIRM. Set by
	// expectConfirm, under mu, before the request is sent.
	confirm     bool
	holderKey   string // CURVE key of the worker that holds it (curve.go)
	wi          *workerInfo
	ackedAt     time.Time
	answered    bool // a reply frame arrived
	queue       []queuedFrame
	queueBuf    [2]queuedFrame // most replies are one frame: no allocation
	queuedBytes int
	maxBuffered int
	err         error
	// direct, when set (a WebSocket's relay: websocket_direct.go), may
	// write a frame to the client at once when nothing is queued; it
	// returns how much it wrote and whether to wake the relay anyway.
	direct func(body []byte) (int, bool)
}

func newExchange(id uint64, maxBuffered int) *exchange {
	ex := &exchange{id: id, signal: make(chan struct{}, 1), maxBuffered: maxBuffered}
	ex.queue = ex.queueBuf[:0]
	return ex
}

var errOverflow = errors.New("client reads slower than the worker writes: reply buffer limit reached")

// deliver queues one reply frame for the exchange, or with direct (a
// frame for this connection alone) offers it to the direct writer first.
func (ex *exchange) deliver(body []byte, f *replyFrame, direct bool) {
	ex.mu.Lock()
	if !ex.answered {
		ex.answered = true
		if ex.wi != nil {
			ex.wi.answered.Add(1)
		}
	}
	wake := true
	if ex.err == nil {
		if err := checkReplyFrame(len(body), ex.maxBuffered, ex.worker); err != nil {
			ex.err = err
		} else if ex.maxBuffered > 0 && ex.queuedBytes+len(body) > ex.maxBuffered {
			ex.err = errOverflow
		} else {
			rest := body
			if direct {
				rest, wake = ex.offerDirect(body)
			}
			if len(rest) > 0 || len(body) == 0 { // an empty frame ends the reply: always queued
				f.retain()
				ex.queue = append(ex.queue, queuedFrame{body: rest, frame: f})
				ex.queuedBytes += len(rest)
			}
		}
	}
	ex.mu.Unlock()
	if wake {
		ex.wake()
	}
}

// offerDirect offers body to the direct writer, if there is one and
// nothing is queued before body; it returns what is left to queue and
// whether the relay must be woken. ex.mu is held.
func (ex *exchange) offerDirect(body []byte) (rest []byte, wake bool) {
	if ex.direct == nil || len(ex.queue) > 0 || len(body) == 0 {
		return body, true
	}
	n, wake := ex.direct(body)
	if n < len(body) {
		return body[n:], true
	}
	return nil, wake
}

// setDirect sets (or, with nil, ends) the exchange's direct writer; once
// it returns, the old one is not called any more.
func (ex *exchange) setDirect(direct func(body []byte) (int, bool)) {
	ex.mu.Lock()
	ex.direct = direct
	ex.mu.Unlock()
}

// expectAck makes the worker's ACK observable on acked and, for a request
// of an affinity session, records the session the ACK pins.
func (ex *exchange) expectAck(session string) {
	ex.mu.Lock()
	if ex.acked == nil {
		ex.acked = make(chan struct{})
	}
	if session != "" {
		ex.session = session
	}
	ex.mu.Unlock()
}

// sessionKey is the affinity session expectAck recorded, or "".
func (ex *exchange) sessionKey() string {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	return ex.session
}

// ackVerdict is what becomes of a worker's ACK of an exchange.
type ackVerdict int

const (
	// ackTaken: the worker holds the request now.
	ackTaken ackVerdict = iota
	// ackConfirm: it holds it, and waits for CONFIRM before it runs it
	// (zmqx.HeaderConfirm).
	ackConfirm
	// ackAbandoned: it holds it, but the client went away before any
	// worker was known (notifyDisconnect sent Mongrel2's notice, which
	// PUSH handed to any worker): tell this one (DISCONNECT).
	ackAbandoned
	// ackRefused: nobody acknowledged the request by its dispatch
	// deadline and it is being sent again under a new id: this worker
	// must not run it (DISCONNECT, never CONFIRM).
	ackRefused
)

// setWorker records the worker that acknowledged ex and wakes the request,
// which may owe that worker credit. wi is nil in tests.
func (ex *exchange) setWorker(w string, wi *workerInfo) ackVerdict {
	ex.mu.Lock()
	if ex.givenUp {
		ex.mu.Unlock()
		return ackRefused
	}
	first := ex.worker == ""
	verdict := ackTaken
	switch {
	case ex.abandoned && (first || ex.confirm):
		// (An ACK sent again of a request that waits for CONFIRM is
		// told again: the first DISCONNECT may be what it missed.)
		verdict = ackAbandoned
	case ex.confirm:
		verdict = ackConfirm // also for an ACK sent again
	}
	acked := ex.acked
	ex.worker = w
	if first {
		ex.wi = wi
		ex.ackedAt = time.Now()
		if ex.answered && wi != nil {
			wi.answered.Add(1) // the reply beat the ACK
		}
	}
	ex.mu.Unlock()
	if first && acked != nil {
		close(acked)
	}
	ex.wake()
	return verdict
}

// abandon notes that ex's client went away and returns the worker known
// to hold it ("" if none acknowledged it yet: an ACK that comes later
// learns from setWorker that it must be told).
func (ex *exchange) abandon() string {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	ex.abandoned = true
	return ex.worker
}

// expectConfirm marks ex as a request whose worker waits for CONFIRM.
func (ex *exchange) expectConfirm() {
	ex.mu.Lock()
	ex.confirm = true
	ex.mu.Unlock()
}

// giveUpDispatch reports whether no worker has acknowledged ex, and if so
// refuses every later ACK of it, in one step: the caller sends the request
// again, and an ACK that raced the decision must not be confirmed
// (setWorker).
func (ex *exchange) giveUpDispatch() bool {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	if ex.worker == "" {
		ex.givenUp = true
	}
	return ex.givenUp
}

func (ex *exchange) workerID() string {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	return ex.worker
}

func (ex *exchange) fail(err error) {
	ex.mu.Lock()
	if ex.err == nil {
		ex.err = err
	}
	ex.mu.Unlock()
	ex.wake()
}

func (ex *exchange) wake() {
	select {
	case ex.signal <- struct{}{}:
	default:
	}
}

// releaseQueued releases the frames still queued.
func (ex *exchange) releaseQueued() {
	ex.mu.Lock()
	for _, qf := range ex.queue {
		qf.frame.release()
	}
	ex.emptyQueue()
	ex.mu.Unlock()
}

// emptyQueue drops the queued frames (not released: the caller took or
// released them); ex.mu is held.
func (ex *exchange) emptyQueue() {
	clear(ex.queue)
	ex.queue = ex.queue[:0]
	ex.queuedBytes = 0
}

// take appends the queued frames to dst and empties the queue, returning
// them with the error, if any, that ended the exchange. Frames queued
// before an error are returned with it. The caller releases each frame once
// it is written.
//
// The frames are copied, not handed over with the queue's backing array:
// that array may be the exchange's own queueBuf, and a caller that kept it
// for the next request (as the pooled requestState does) would make every
// exchange keep the previous one alive, a chain as long as the process has
// served requests.
func (ex *exchange) take(dst []queuedFrame) ([]queuedFrame, error) {
	ex.mu.Lock()
	dst = append(dst, ex.queue...)
	ex.emptyQueue()
	err := ex.err
	ex.mu.Unlock()
	return dst, err
}
