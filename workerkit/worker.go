package workerkit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/zmqio"
)

const (
	// DefaultMaxConcurrent is the handler bound when Worker.MaxConcurrent is
	// zero: enough to hide ZeroMQ round trips, small enough that one worker
	// does not hoard work that idle workers could do.
	DefaultMaxConcurrent = 64
	// DefaultShutdownTimeout is how long Serve waits for running handlers
	// when Worker.ShutdownTimeout is zero.
	DefaultShutdownTimeout = 30 * time.Second
)

const (
	// recvTimeout bounds how long a request socket's owner sits in a
	// blocking receive before it looks at shutdown and pause state again.
	recvTimeout = 50 * time.Millisecond
	// drainTimeout is the silence that means "the local request queue is
	// empty" at shutdown; drainMax bounds the whole drain, as a busy front
	// end keeps refilling the queue until we disconnect.
	drainTimeout = 10 * time.Millisecond
	drainMax     = 100 * time.Millisecond
	// sendTimeout bounds one blocking send on a full reply socket, so its
	// owner keeps watching subscriptions and shutdown while the front end
	// is slow.
	sendTimeout = 100 * time.Millisecond
	// subCheckMax is how often the reply socket's owner reads subscription
	// frames once things are steady; while waiting for a front end it starts
	// at subCheckMin and backs off.
	subCheckMin = time.Millisecond
	subCheckMax = 50 * time.Millisecond
	// replyLinger lets queued replies reach the front end after Close.
	replyLinger = 2 * time.Second
	// replyHWM is large because replies must not be dropped: with
	// XPUB_NODROP a full queue blocks the sender instead.
	replyHWM = 10000
	// hardGrace is how long Serve waits for handlers after cancelling their
	// contexts before it gives up on them.
	hardGrace = time.Second
	// heartbeat settings notice a dead or frozen front end at the transport
	// level, which turns into an unsubscription, which pauses the worker.
	heartbeatIvl     = time.Second
	heartbeatTimeout = 3 * time.Second
)

// Worker serves an http.Handler to one or more front ends. The zero value of
// every field but FrontEnds and Handler is a sensible default; a Worker may
// be reused after Serve returns.
type Worker struct {
	// FrontEnds to serve; requests from each are answered through the same
	// front end's reply endpoint.
	FrontEnds []FrontEnd
	// Handler answers every request.
	Handler http.Handler
	// MaxConcurrent bounds the handlers running at once (default
	// DefaultMaxConcurrent, 64). It is also the backpressure: a worker with
	// no free slot stops pulling requests. Requests addressed to this
	// worker over a control channel (REQ, session affinity) wait for a
	// slot too.
	MaxConcurrent int
	// ShutdownTimeout is how long Serve waits for running handlers after its
	// context is done before cancelling their contexts (default 30s).
	ShutdownTimeout time.Duration
	// Logger receives the worker's diagnostics (default slog.Default()).
	Logger *slog.Logger
	// ID identifies the worker on the control channels of its front ends
	// (the ZeroMQ identity of its DEALER sockets, the same on every front
	// end). Empty: each Serve picks a random one, "wk-" and 16 lowercase hex
	// digits (see NewWorkerID), and logs it. Two workers connected to the
	// same front end must not share an ID. At most 255 printable ASCII
	// characters without spaces.
	ID string

	// serving holds the current run of Serve (a *server), read by Stats
	// (stats.go). An atomic.Value, unlike atomic.Pointer, leaves a Worker
	// copyable before use, as the zero-value literal style invites.
	serving atomic.Value
}

// NewWorkerID returns a random worker id, "wk-" and 16 lowercase hex digits,
// the form Serve uses when Worker.ID is empty. Set it yourself to know the id
// before Serve starts (to log it, or to tell it to the front end's operator).
func NewWorkerID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand panics instead)
	return "wk-" + hex.EncodeToString(b[:])
}

func checkWorkerID(id string) error {
	if id == "" || len(id) > 255 {
		return errors.New("workerkit: Worker.ID must be 1-255 characters")
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c <= ' ' || c >= 0x7f {
			return errors.New("workerkit: Worker.ID " + strconv.Quote(id) + ": only printable ASCII without spaces")
		}
	}
	return nil
}

// Serve is the one-call form for a worker's main: it serves h on the front
// ends (DefaultFrontEnd if none are given) until SIGINT or SIGTERM, then
// finishes the requests it holds and returns. A second signal cancels the
// running handlers' contexts instead of waiting for them.
func Serve(h http.Handler, frontEnds ...FrontEnd) error {
	if len(frontEnds) == 0 {
		frontEnds = []FrontEnd{DefaultFrontEnd}
	}
	w := &Worker{FrontEnds: frontEnds, Handler: h}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	force := make(chan struct{})
	sigc := make(chan os.Signal, 2)
	signal.Notify(sigc, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigc)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 0; ; n++ {
			select {
			case sig := <-sigc:
				if n == 0 {
					w.logger().Info("signal received: finishing in-flight requests (signal again to cancel them)", "signal", sig.String())
					cancel()
				} else {
					close(force)
					return
				}
			case <-done:
				return
			}
		}
	}()
	err := w.serve(ctx, force)
	close(done)
	wg.Wait()
	return err
}

// Serve connects to the front ends and serves requests until ctx is done.
// Then it stops taking work, serves the requests it already holds, waits
// for running handlers (up to ShutdownTimeout) and returns nil; it returns
// an error if it could not start, or if handlers were still running after
// their contexts had been cancelled.
func (w *Worker) Serve(ctx context.Context) error { return w.serve(ctx, nil) }

func (w *Worker) logger() *slog.Logger {
	if w.Logger != nil {
		return w.Logger
	}
	return slog.Default()
}

// server is one run of Worker.Serve.
type server struct {
	h       http.Handler
	log     *slog.Logger
	zctx    *zmq.Context
	fes     []*frontEnd
	id      string // worker id on control channels
	maxConc int

	// sem has one token per running handler; taking one before receiving
	// is what makes a busy worker stop pulling.
	sem  chan struct{}
	stop chan struct{} // closed: take no more work
	errc chan error    // fatal errors from socket owners
	// base is the parent of every request context: it carries the values
	// of Serve's context but is cancelled only on hard shutdown.
	base     context.Context
	handlers sync.WaitGroup
	running  atomic.Int64 // handlers running, for logs
	// idle hands a request to a handler goroutine waiting for its next one
	// (see run); unbuffered, so a send succeeds only if one is waiting.
	idle   chan *flight
	rcvHWM int
	// dropped counts requests never started: past their dispatch deadline
	// (late), or not acknowledgeable although they carry one (unacked).
	droppedLate, droppedUnacked atomic.Int64
	// creditStalls counts the times a response waited for reply credit,
	// and how long.
	creditStalls stallCounter

	mu       sync.Mutex
	inflight map[flightKey]*flight
	// members are the responses that joined a Group; ended at shutdown.
	members       map[*member]struct{}
	membersClosed bool // shutting down: Join fails
}

// frontEnd is the run-time state of one FrontEnd. Its request socket is
// owned by runRequests and its reply socket by runReplies, each for its
// whole life; everything shared between goroutines here is a channel or an
// atomic.
type frontEnd struct {
	s     *server
	cfg   FrontEnd
	index int
	log   *slog.Logger

	out    chan *frame   // replies for the reply socket's owner
	dead   chan struct{} // closed when the reply socket's owner is gone
	active atomic.Bool   // the front end is subscribed to our replies
	// paused: the front end told us PAUSE (it finds us hung); the request
	// socket's owner hands its requests back (NACK) until RESUME.
	paused atomic.Bool
	kick   chan struct{} // wakes the request socket's owner when active changes
	ctl    *ctlConn      // control channel, nil if FrontEnd.Control is empty
	// kickAddr wakes the owner of the addressed-request queue (REQ on the
	// control channel) when active changes.
	kickAddr chan struct{}

	// Bind mode (cfg.Bind) only: several front ends may connect. subs is
	// the number of subscriptions on the reply socket (one per connected
	// front end), peers the connections to the request socket; work is
	// taken while subs >= peers, so that a front end whose requests arrive
	// before its subscription is not answered into the void. subPoke asks
	// the reply socket's owner to look for subscriptions promptly.
	subs    atomic.Int64
	peers   atomic.Int64
	subPoke chan struct{}
}

// flightKey finds the requests a disconnect or a credit is about. Control
// messages name the connection only (ids are unique per front end); a
// Mongrel2 notice also names the sender, which is checked on the flight.
type flightKey struct {
	fe     *frontEnd
	connID string
}

// flight is one request from the moment it is taken (registered, in arrival
// order) until its response is complete (for a Group member: until it
// leaves the group). An addressed request (REQ) is a flight while it waits
// for a handler slot, so that a DISCONNECT finds it there too.
type flight struct {
	key    flightKey
	sender string
	cancel context.CancelFunc
	next   *flight // same key: keep-alive connections may pipeline

	// Set when the request is taken, for start and serveRequest; cleared
	// when the handler starts (a Group member keeps its flight for long).
	req    *mongrel2.Request
	ctx    context.Context
	window int64 // ZMQX_WINDOW, 0 if absent or without control channel
	// deadline is ZMQX_DEADLINE (unix milliseconds, 0 if none): the request
	// must not start after it.
	deadline int64

	// base is the request's own cancellable context (ctx may wrap it, and
	// is cleared when the handler starts); cancel cancels it.
	base context.Context
	// leaseCtx is ctx with the control channel (lease.go).
	leaseCtx flightCtx
	// ackState: ackNone, or where its ACK is (lease.go).
	ackState atomic.Int32

	// flow is set, before the ACK is queued, for a request that is
	// acknowledged: the credit that paces its reply. Guarded by server.mu
	// once the flight is registered.
	flow *flow
	// stream: the request carries ZMQX_BODY: stream, its body comes over
	// the control channel. upload is set with flow when the request is
	// acknowledged (BODY messages find it, guarded like flow); nil if the
	// body cannot come (no control connection).
	stream bool
	length int64 // of a streamed body: content-length, -1 if unknown
	upload *upload
}

// unacked is called when the ACK of fl cannot be sent: no credit will come
// for its reply, and no streamed body.
func (fl *flight) unacked() {
	fl.flow.lift()
	if fl.upload != nil {
		fl.upload.finish(errUploadUnavailable)
	}
}

// testHookActive, when set by tests, observes subscription state changes.
var testHookActive func(index int, active bool)

// testHookSubs, when set by tests, observes the subscription count of a
// front end in bind mode.
var testHookSubs func(index, subs int)

func (w *Worker) serve(ctx context.Context, force <-chan struct{}) error {
	if w.Handler == nil {
		return errors.New("workerkit: Worker.Handler is nil")
	}
	if len(w.FrontEnds) == 0 {
		return errors.New("workerkit: no front ends to serve")
	}
	hasControl := false
	for _, f := range w.FrontEnds {
		if err := f.validate(); err != nil {
			return err
		}
		hasControl = hasControl || f.Control != ""
	}
	id := w.ID
	if id == "" {
		id = NewWorkerID()
	} else if err := checkWorkerID(id); err != nil {
		return err
	}
	maxConc := w.MaxConcurrent
	if maxConc <= 0 {
		maxConc = DefaultMaxConcurrent
	}
	timeout := w.ShutdownTimeout
	if timeout <= 0 {
		timeout = DefaultShutdownTimeout
	}

	zctx, err := zmqio.NewContext()
	if err != nil {
		return fmt.Errorf("workerkit: new ZeroMQ context: %w", err)
	}
	hardCtx, hardCancel := context.WithCancel(context.WithoutCancel(ctx))
	defer hardCancel()
	s := &server{
		h:        w.Handler,
		log:      w.logger(),
		zctx:     zctx,
		id:       id,
		maxConc:  maxConc,
		sem:      make(chan struct{}, maxConc),
		stop:     make(chan struct{}),
		idle:     make(chan *flight),
		errc:     make(chan error, 2*len(w.FrontEnds)),
		base:     hardCtx,
		rcvHWM:   maxConc,
		inflight: make(map[flightKey]*flight),
		members:  make(map[*member]struct{}),
	}
	nSockets := 0
	for i, f := range w.FrontEnds {
		fe := &frontEnd{
			s:     s,
			cfg:   f,
			index: i,
			log:   s.log.With("frontend", f.String()),
			out:   make(chan *frame, max(64, 2*maxConc)),
			dead:  make(chan struct{}),
			kick:  make(chan struct{}, 1),
		}
		if f.Bind {
			fe.subPoke = make(chan struct{}, 1)
		}
		nSockets += 2
		if f.Control != "" {
			fe.ctl = newCtlConn(fe)
			fe.kickAddr = make(chan struct{}, 1)
			nSockets++
		}
		s.fes = append(s.fes, fe)
	}

	var pulls, pubs sync.WaitGroup
	quit := make(chan struct{}) // closed: reply and control owners flush and close
	ready := make(chan error, nSockets)
	for _, fe := range s.fes {
		pubs.Add(1)
		go func() { defer pubs.Done(); fe.runReplies(ready, quit) }()
		if fe.ctl != nil {
			pubs.Add(1)
			go func() { defer pubs.Done(); fe.ctl.run(ready, quit) }()
			pulls.Add(1)
			go func() { defer pulls.Done(); fe.runAddressed() }()
		}
		pulls.Add(1)
		go func() { defer pulls.Done(); fe.runRequests(ready) }()
	}
	var startErr error
	for range nSockets {
		if err := <-ready; err != nil && startErr == nil {
			startErr = err
		}
	}
	if startErr != nil {
		close(s.stop)
		hardCancel()
		pulls.Wait()
		close(quit)
		pubs.Wait()
		_ = zctx.Term()
		return startErr
	}
	if hasControl {
		s.log.Info("worker started", "frontends", len(s.fes), "max_concurrent", maxConc, "id", id)
	} else {
		s.log.Info("worker started", "frontends", len(s.fes), "max_concurrent", maxConc)
	}
	w.serving.Store(s)
	defer w.serving.CompareAndSwap(s, (*server)(nil))

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-s.errc:
	case <-force:
	}
	close(s.stop)
	s.log.Info("worker stopping: no new work, finishing what it holds", "in_flight", s.running.Load())
	// Group members would keep the worker forever: end their responses
	// now, so that their clients reconnect to a worker that stays.
	s.endMembers()

	done := make(chan struct{})
	go func() { pulls.Wait(); s.handlers.Wait(); close(done) }()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	abandoned := false
	select {
	case <-done:
	case <-timer.C:
		s.log.Warn("shutdown timeout: cancelling in-flight requests", "in_flight", s.running.Load())
		hardCancel()
		abandoned = !waitFor(done, hardGrace)
	case <-force:
		s.log.Warn("forced shutdown: cancelling in-flight requests", "in_flight", s.running.Load())
		hardCancel()
		abandoned = !waitFor(done, hardGrace)
	}
	hardCancel()
	pulls.Wait() // request owners always end once hardCancel has run
	if n, m := s.droppedLate.Load(), s.droppedUnacked.Load(); n+m > 0 {
		s.log.Info("requests dropped unstarted (their front ends re-send them)",
			"past_dispatch_deadline", n, "not_acknowledgeable", m)
	}
	s.log.Debug("handlers done; flushing replies")
	close(quit)
	pubs.Wait()
	s.log.Debug("reply sockets closed; terminating ZeroMQ context")
	if err := zctx.Term(); err != nil && runErr == nil {
		runErr = fmt.Errorf("workerkit: terminating ZeroMQ context: %w", err)
	}
	if abandoned && runErr == nil {
		runErr = fmt.Errorf("workerkit: %d handlers did not return after their contexts were cancelled", s.running.Load())
	}
	s.log.Info("worker stopped")
	return runErr
}

func waitFor(c <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-c:
		return true
	case <-t.C:
		return false
	}
}

func (s *server) fatal(err error) {
	select {
	case s.errc <- err:
	default:
	}
}

func isEAGAIN(err error) bool { return zmq.AsErrno(err) == zmq.Errno(syscall.EAGAIN) }

// runReplies owns the front end's reply socket (XPUB connected to the front
// end's SUB, or bound in bind mode). It publishes replies from fe.out and
// watches subscription frames, which are the only reliable sign that the
// front end can hear us.
func (fe *frontEnd) runReplies(ready chan<- error, quit <-chan struct{}) {
	defer close(fe.dead)
	sock, err := fe.s.zctx.NewSocket(zmq.XPUB)
	if err == nil {
		err = firstErr(
			sock.SetLinger(0),
			sock.SetSndhwm(replyHWM),
			sock.SetXpubNodrop(true),
			sock.SetSndtimeo(sendTimeout),
			sock.SetHeartbeatIvl(heartbeatIvl),
			sock.SetHeartbeatTimeout(heartbeatTimeout),
		)
	}
	if err == nil {
		if fe.cfg.Bind {
			err = firstErr(
				// Every subscription and unsubscription, not only the first
				// and last of a topic: front ends connecting with the same
				// sender id count one each (see frontEnd.subs). A front end
				// that goes away is unsubscribed from its topics.
				sock.SetXpubVerboser(1),
				sock.Bind(fe.cfg.Replies),
			)
		} else {
			err = firstErr(
				// Without IMMEDIATE a connecting socket keeps its pipe (and
				// the front end's subscriptions) across disconnects, and we
				// would never learn that the front end went away.
				sock.SetImmediate(true),
				sock.Connect(fe.cfg.Replies),
			)
		}
	}
	if err != nil {
		err = fmt.Errorf("workerkit: reply socket for %s: %w", fe.cfg.Replies, err)
	}
	ready <- err
	if err != nil {
		if sock != nil {
			_ = sock.Close()
		}
		return
	}

	topics := make(map[string]int)
	delay := subCheckMin
	timer := time.NewTimer(delay)
	defer timer.Stop()
	waitingSince := time.Now()
	warned := false
	var deadline time.Time // set once quitting: how long a slow front end may hold us
	for {
		select {
		case f := <-fe.out:
			fe.send(sock, f, topics, deadline)
		case <-fe.subPoke: // nil unless bind mode
			// A front end connected to the request socket and has not
			// subscribed yet: the request socket's owner waits for it.
			fe.readSubs(sock, topics)
			delay = subCheckMin
			timer.Reset(delay)
		case <-timer.C:
			fe.readSubs(sock, topics)
			if fe.active.Load() && (!fe.cfg.Bind || fe.peers.Load() <= fe.subs.Load()) {
				delay = subCheckMax
				waitingSince = time.Time{}
			} else if fe.active.Load() {
				// Bind mode, a subscription is awaited (see subPoke).
				delay = min(2*delay, subCheckMax)
			} else {
				delay = min(2*delay, subCheckMax)
				if waitingSince.IsZero() {
					waitingSince = time.Now()
					warned = false
				}
				if !warned && time.Since(waitingSince) > 5*time.Second {
					if fe.cfg.Bind {
						fe.log.Info("no front end has connected yet (bind mode: front ends connect to us)", "replies", fe.cfg.Replies)
					} else {
						fe.log.Warn("front end still not subscribed to replies; is it running?", "replies", fe.cfg.Replies)
					}
					warned = true
				}
			}
			timer.Reset(delay)
		case <-quit:
			deadline = time.Now().Add(replyLinger)
		drain:
			for {
				select {
				case f := <-fe.out:
					fe.send(sock, f, topics, deadline)
				default:
					break drain
				}
			}
			_ = sock.SetLinger(replyLinger)
			if err := sock.Close(); err != nil {
				fe.log.Warn("closing reply socket", "err", err)
			}
			return
		}
	}
}

// send publishes one reply frame. With XPUB_NODROP a full queue blocks for
// sendTimeout; meanwhile the front end may have gone away, which is the only
// case in which a reply is dropped.
func (fe *frontEnd) send(sock *zmq.Socket, f *frame, topics map[string]int, deadline time.Time) {
	defer putFrame(f)
	for {
		var err error
		if c := f.inC(); c != nil {
			// On failure c is still ours: the loop may send it again.
			err = zmqio.SendOwned(sock, c, len(f.b), 0)
		} else {
			_, err = sock.SendBytes(f.b, 0)
		}
		if err == nil {
			return
		}
		if !isEAGAIN(err) {
			fe.log.Error("sending reply", "err", err)
			return
		}
		fe.readSubs(sock, topics)
		if !fe.active.Load() || fe.s.base.Err() != nil || (!deadline.IsZero() && time.Now().After(deadline)) {
			fe.log.Warn("dropping reply: front end not reading")
			return
		}
	}
}

// readSubs reads the pending subscription frames: 0x01+topic subscribes,
// 0x00+topic unsubscribes. Mongrel2 with an empty recv_ident subscribes to the
// empty topic, so a bare 0x01 counts too. topics counts the subscriptions of
// each topic: in connect mode the XPUB reports only the first and the last,
// so a count is 0 or 1; in bind mode (XPUB_VERBOSER) it is the number of
// front ends subscribed to it.
func (fe *frontEnd) readSubs(sock *zmq.Socket, topics map[string]int) {
	was := len(topics) > 0
	changed := false
	for {
		msg, err := sock.RecvBytes(zmq.DONTWAIT)
		if err != nil {
			if !isEAGAIN(err) {
				fe.log.Error("reading subscriptions", "err", err)
			}
			break
		}
		if len(msg) == 0 {
			continue
		}
		switch msg[0] {
		case 1:
			topics[string(msg[1:])]++
			changed = true
		case 0:
			if topics[string(msg[1:])] <= 1 {
				delete(topics, string(msg[1:]))
			} else {
				topics[string(msg[1:])]--
			}
			changed = true
		}
	}
	if !changed {
		return
	}
	if fe.cfg.Bind {
		n := 0
		for _, c := range topics {
			n += c
		}
		if old := fe.subs.Swap(int64(n)); old != int64(n) {
			fe.log.Debug("subscriptions changed", "subscriptions", n, "request_connections", fe.peers.Load())
			if testHookSubs != nil {
				testHookSubs(fe.index, n)
			}
			select {
			case fe.kick <- struct{}{}:
			default:
			}
		}
	}
	now := len(topics) > 0
	if now == was {
		return
	}
	// Tests observe the change: activation before it takes effect, pausing
	// after, so that whatever they do next is ordered with it.
	if now && testHookActive != nil {
		testHookActive(fe.index, now)
	}
	fe.active.Store(now)
	if !now && testHookActive != nil {
		testHookActive(fe.index, now)
	}
	if now {
		fe.log.Info("front end subscribed: taking work")
	} else {
		fe.log.Warn("front end unsubscribed (gone away?): pausing until it comes back")
		// Its Group members lost what was published meanwhile, and a
		// restarted front end never reports their clients gone.
		fe.s.dropMembers(fe)
	}
	for _, k := range []chan struct{}{fe.kick, fe.kickAddr} {
		select {
		case k <- struct{}{}:
		default:
		}
	}
}

// runRequests owns the front end's request socket (PULL connected to the
// front end's PUSH).
func (fe *frontEnd) runRequests(ready chan<- error) {
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
	held := fe.receive(sock, gate)
	if gate != nil {
		gate.close(sock)
	}
	if err := sock.Close(); err != nil {
		fe.log.Warn("closing request socket", "err", err)
	}
	// Serve what we took before cutting the flow.
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

// receive is the request socket owner's working life: it returns when the
// worker stops, with the requests already queued locally (admitted, not
// started). gate is set in bind mode, where the socket is already bound.
func (fe *frontEnd) receive(sock *zmq.Socket, gate *bindGate) (held []*flight) {
	s := fe.s
	connected := gate != nil
	wait := func() bool { return fe.waitActive(fe.kick) }
	if gate != nil {
		wait = func() bool { return fe.waitBound(gate) }
	}
	in, err := newSocketReader(sock)
	if err != nil {
		s.fatal(fmt.Errorf("workerkit: request socket for %s: %w", fe.cfg.Requests, err))
		return nil
	}
	defer in.close()
	for wait() {
		if !connected {
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
				return nil
			}
			connected = true
		}
		// Receive first, then wait for a handler slot. An idle owner holds
		// no slot, so requests addressed to this worker over the control
		// channel (REQ) find one free; and a disconnect notice is read,
		// and cancels its request, even while every slot is busy. While
		// all slots are busy one request waits here and the rest in the
		// socket's queue: either way they were routed to this worker.
		msg, err := in.recv(recvTimeout)
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
				break
			}
		} else if !fe.active.Load() && !fe.waitActive(fe.kick) {
			// The front end went away while we were receiving, and we are
			// stopping before it came back: nobody can take the answer.
			fe.log.Warn("dropping a request that arrived as its front end went away")
			break
		}
		fl := s.admit(fe, msg)
		if fl == nil {
			continue // a notice, or nothing to run
		}
		if fe.paused.Load() {
			fe.ctl.nack(fl) // the front end sends it to another worker
			continue
		}
		switch s.takeSlotUnlessPaused(fl) {
		case slotTaken:
			s.start(fl)
		case slotPaused:
			fe.ctl.nack(fl)
		case slotStopped:
			held = append(held, fl) // served below, with what is queued
		}
	}
	if !connected || !fe.active.Load() {
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

// resumed wakes the request socket's owner when its pause changes.
func (fe *frontEnd) wakeOwner() {
	select {
	case fe.kick <- struct{}{}:
	default:
	}
}

// waitActive blocks until the front end is subscribed; false means stop.
// kick is the caller's wake-up channel (each waiter has its own).
func (fe *frontEnd) waitActive(kick <-chan struct{}) bool {
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
	// deadlineHeader is the trusted request header that bounds when the
	// request may start: unix time in milliseconds.
	deadlineHeader = "ZMQX_DEADLINE"
	// maxDeadline keeps deadline arithmetic (in microseconds) far from
	// overflow; later deadlines are nonsense.
	maxDeadline = 1 << 50
)

// admit parses a request frame and registers the request, on the goroutine
// that received it and in arrival order, so that a disconnect (the Mongrel2
// notice on the same socket, or DISCONNECT on the control channel) always
// finds the request it follows, even one still waiting for a handler slot.
// It handles the frames that are not requests to run (notices, unsupported
// or malformed messages) and returns nil for them. It takes no slot.
func (s *server) admit(fe *frontEnd, msg []byte) *flight {
	req, err := mongrel2.ParseRequest(msg)
	if err != nil {
		fe.log.Warn("dropping malformed request frame", "err", err, "len", len(msg), "start", printable(msg, 64))
		return nil
	}
	// One pass for the front end's keys; the last field of a name wins, as
	// in Request.Header. Clients cannot send these upper-case names.
	var method, window, deadline, body, length string
	for i := range req.Headers {
		switch h := &req.Headers[i]; h.Name {
		case "METHOD":
			method = h.Value()
		case windowHeader:
			window = h.Value()
		case deadlineHeader:
			deadline = h.Value()
		case bodyHeader:
			body = h.Value()
		case "content-length":
			length = h.Value()
		}
	}
	switch method {
	case "JSON":
		if req.IsDisconnect() {
			s.cancelFlights(flightKey{fe, req.ConnID}, req.Sender)
		} else {
			fe.log.Info("ignoring JSON message", "conn", req.ConnID, "body", printable(req.Body, 200))
		}
		return nil
	case "XML", "WEBSOCKET":
		fe.log.Info("ignoring unsupported message", "method", method, "conn", req.ConnID)
		return nil
	}
	ctx, cancel := context.WithCancel(s.base)
	fl := &flight{key: flightKey{fe, req.ConnID}, sender: req.Sender, cancel: cancel, req: req,
		stream: body == bodyStream}
	fl.ctx, fl.base = ctx, ctx
	if fe.ctl != nil {
		fl.leaseCtx = flightCtx{Context: ctx, fl: fl} // no allocation of its own
		fl.ctx = &fl.leaseCtx
	}
	if fl.stream {
		// The inline body is empty; content-length is the streamed body's
		// (absent for a chunked upload).
		fl.length = -1
		if n, err := strconv.ParseInt(strings.TrimSpace(length), 10, 64); err == nil && n >= 0 {
			fl.length = n
		}
	} else if body != "" {
		fe.log.Warn("ignoring unknown "+bodyHeader+" header", "value", body, "conn", req.ConnID)
	}
	if window != "" && fe.ctl != nil {
		if n, err := strconv.ParseInt(window, 10, 64); err == nil && n > 0 {
			fl.window = n
		} else {
			fe.log.Warn("ignoring invalid "+windowHeader+" header", "value", window, "conn", req.ConnID)
		}
	}
	if deadline != "" {
		if n, err := strconv.ParseInt(deadline, 10, 64); err == nil && n > 0 && n < maxDeadline {
			fl.deadline = n
		} else {
			fe.log.Warn("ignoring invalid "+deadlineHeader+" header", "value", deadline, "conn", req.ConnID)
		}
	}
	s.mu.Lock()
	fl.next = s.inflight[fl.key]
	s.inflight[fl.key] = fl
	s.mu.Unlock()
	return fl
}

type slotResult int

const (
	slotTaken slotResult = iota
	slotPaused
	slotStopped
)

// takeSlotUnlessPaused is takeSlot for the request socket's owner, which
// also gives up when its front end pauses it: a paused worker keeps reading
// its requests (a pipe left full stalls libzmq's engine, and its heartbeats
// with it) and hands each back with NACK.
func (s *server) takeSlotUnlessPaused(fl *flight) slotResult {
	select {
	case s.sem <- struct{}{}:
		return slotTaken
	default:
	}
	if testHookSlotWait != nil {
		testHookSlotWait(fl.key.connID)
	}
	fe := fl.key.fe
	for {
		select {
		case s.sem <- struct{}{}:
			return slotTaken
		case <-s.stop:
			return slotStopped
		case <-fe.kick:
			if fe.paused.Load() {
				return slotPaused
			}
		}
	}
}

// testHookSlotWait, when set by tests, is called when an admitted request
// has to wait for a handler slot.
var testHookSlotWait func(connID string)

// takeSlot takes a handler slot for fl, waiting while all are busy; false if
// abort is closed first.
func (s *server) takeSlot(fl *flight, abort <-chan struct{}) bool {
	select {
	case s.sem <- struct{}{}:
		return true
	default:
	}
	if testHookSlotWait != nil {
		testHookSlotWait(fl.key.connID)
	}
	select {
	case s.sem <- struct{}{}:
		return true
	case <-abort:
		return false
	}
}

// start runs an admitted request on the handler slot the caller took: the
// moment it would start is the moment to check that it still may. If not, it
// drops the request silently (no ACK, no reply) and gives the slot back.
func (s *server) start(fl *flight) {
	fe := fl.key.fe
	if fl.ctx.Err() != nil {
		// Its client went away (DISCONNECT) while it waited for a slot, or
		// the worker is being shut down hard.
		fe.log.Debug("dropping a request whose client went away before it started", "conn", fl.key.connID)
		s.drop(fl)
		return
	}
	if fl.deadline != 0 {
		// The front end re-sends a request that nobody acknowledged by its
		// deadline: starting it now could run it twice.
		if late := time.Now().UnixMicro() - fl.deadline*1000; late > 0 {
			s.droppedLate.Add(1)
			fe.log.Debug("dropping a request past its dispatch deadline", "conn", fl.key.connID,
				"late", time.Duration(late)*time.Microsecond)
			s.drop(fl)
			return
		}
	}
	if fl.window > 0 {
		if fe.ctl.connected.Load() {
			f := newFlow(fl.window)
			f.stalls = &s.creditStalls
			var u *upload
			if fl.stream {
				// The front end starts sending the body once it has our
				// ACK, with the window as its first credit.
				u = newUpload(fe.ctl, fl.key.connID, fl.ctx, fl.window, fl.length)
			}
			s.mu.Lock()
			fl.flow = f // CREDIT and a lost control connection find it now
			fl.upload = u
			s.mu.Unlock()
			fl.ackState.Store(ackQueued)
			// Queued, not waited for: the handler starts at once (see ack).
			fe.ctl.ack(fl)
		} else if fl.deadline != 0 {
			// No control connection, so no ACK: the front end will re-send
			// this request after its deadline, and we must not run it too.
			s.droppedUnacked.Add(1)
			fe.ctl.warnUnacked()
			fe.log.Debug("dropping a request that cannot be acknowledged (control channel down)", "conn", fl.key.connID)
			s.drop(fl)
			return
		}
		// Otherwise serve it without ACK and flow control, as a worker
		// without control channel would.
	}
	s.handlers.Add(1)
	s.running.Add(1)
	s.run(fl)
}

// handlerIdle is how long a handler goroutine waits for its next request
// before it exits.
const handlerIdle = 10 * time.Second

// run serves fl on a handler goroutine that is waiting for work, or on a new
// one. Goroutines are reused because a fresh one per request must be
// created and grow its stack to the depth of net/http handlers every time;
// a waiting one already has its stack. At most as many wait as ever ran at once (maxConc), and
// only for handlerIdle.
func (s *server) run(fl *flight) {
	select {
	case s.idle <- fl:
	default:
		go s.handlerLoop(fl)
	}
}

func (s *server) handlerLoop(fl *flight) {
	var idle *time.Timer
	for {
		s.serveRequest(fl)
		if idle == nil {
			idle = time.NewTimer(handlerIdle)
		} else {
			idle.Reset(handlerIdle)
		}
		select {
		case fl = <-s.idle:
		case <-idle.C:
			return
		case <-s.stop:
			// Requests started from now on (those held at shutdown)
			// find no waiting goroutine and get their own.
			idle.Stop()
			return
		}
	}
}

// discard forgets an admitted request that will not start.
func (s *server) discard(fl *flight) {
	s.unregister(fl)
	fl.cancel()
}

// drop is discard for a request that holds a handler slot.
func (s *server) drop(fl *flight) {
	s.discard(fl)
	<-s.sem
}

// cancelFlights cancels the requests of a connection: from sender if it is
// not empty (a Mongrel2 notice), all of them otherwise (a DISCONNECT).
func (s *server) cancelFlights(k flightKey, sender string) {
	s.mu.Lock()
	for f := s.inflight[k]; f != nil; f = f.next {
		if sender == "" || f.sender == sender {
			f.cancel()
		}
	}
	s.mu.Unlock()
}

// grant adds reply credit to the windowed requests of a connection.
func (s *server) grant(k flightKey, n int64) {
	s.mu.Lock()
	for f := s.inflight[k]; f != nil; f = f.next {
		if f.flow != nil {
			f.flow.grant(n)
		}
	}
	s.mu.Unlock()
}

// flightsOf calls fn, under s.mu, for every registered request of fe.
func (s *server) flightsOf(fe *frontEnd, fn func(*flight)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, f := range s.inflight {
		if k.fe != fe {
			continue
		}
		for ; f != nil; f = f.next {
			fn(f)
		}
	}
}

// liftFlows ends flow control for every windowed request of fe: its control
// connection is gone, so no more credit can come, and the front end falls
// back to buffering (max_buffered_reply) or has gone away entirely.
func (s *server) liftFlows(fe *frontEnd) {
	s.flightsOf(fe, func(f *flight) {
		if f.flow != nil {
			f.flow.lift()
		}
	})
}

func (s *server) unregister(fl *flight) {
	s.mu.Lock()
	p := s.inflight[fl.key]
	if p == fl {
		if fl.next == nil {
			delete(s.inflight, fl.key)
		} else {
			s.inflight[fl.key] = fl.next
		}
	} else {
		for ; p != nil; p = p.next {
			if p.next == fl {
				p.next = fl.next
				break
			}
		}
	}
	s.mu.Unlock()
}

func (s *server) serveRequest(fl *flight) {
	// flow and upload were set before this goroutine started, and stay.
	fe, req, ctx, flow, up := fl.key.fe, fl.req, fl.ctx, fl.flow, fl.upload
	fl.req, fl.ctx = nil, nil // a Group member keeps its flight, not the request
	joined := false
	defer func() {
		if up != nil {
			// The handler is done with the body, whether it read it all
			// or not: drop what is buffered, and BODY messages still on
			// their way (the front end stops sending when the response
			// is complete).
			_ = up.Close()
			if testHookUploadClosed != nil {
				testHookUploadClosed(up.connID)
			}
		}
		if !joined {
			// A Group member keeps its flight (disconnects must still
			// reach it) until it leaves; it holds no handler slot.
			s.unregister(fl)
			fl.cancel()
		}
		s.running.Add(-1)
		<-s.sem
		s.handlers.Done()
	}()
	r, err := buildRequest(ctx, req)
	if err != nil {
		fe.log.Warn("bad request", "err", err, "conn", req.ConnID)
		rw := getResponseWriter(fe, ctx, req.Sender, req.ConnID, "", 1, 1)
		rw.flow = flow
		rw.errorResponse(http.StatusBadRequest, "Bad Request\n")
		rw.release()
		return
	}
	if fl.stream {
		r.ContentLength = fl.length
		if up != nil {
			r.Body = up
		} else {
			// The front end sends the body only to a worker that
			// acknowledged the request over the control channel.
			why := "the control channel is not connected"
			if fe.ctl == nil {
				why = "this front end has no control channel"
			} else if fl.window == 0 {
				why = "the request has no " + windowHeader
			}
			fe.log.Warn("streamed request body cannot be received: the handler's reads fail", "conn", req.ConnID, "reason", why)
			r.Body = failedBody{errUploadUnavailable}
		}
	}
	rw := getResponseWriter(fe, ctx, req.Sender, req.ConnID, r.Method, r.ProtoMajor, r.ProtoMinor)
	rw.flow, rw.fl = flow, fl
	if r.Method == "WEBSOCKET_HANDSHAKE" {
		rw.errorResponse(http.StatusNotImplemented, "WebSocket is not supported by this worker\n")
		rw.release()
		return
	}
	if s.runHandler(rw, r) {
		rw.finish()
	}
	if rw.joined {
		// The Group owns the response now; the writer is not recycled, as
		// the handler's goroutines might still hold it.
		joined = true
		return
	}
	rw.release()
}

// runHandler calls the handler and reports whether it returned normally. A
// panic must cost one response, never the worker.
func (s *server) runHandler(rw *responseWriter, r *http.Request) (ok bool) {
	defer func() {
		if ok {
			return
		}
		p := recover()
		abort := p == http.ErrAbortHandler
		if !abort {
			buf := make([]byte, 64<<10)
			logPanic(rw.fe.log, p, buf[:runtime.Stack(buf, false)], rw.connID)
		}
		rw.fail(abort)
	}()
	s.h.ServeHTTP(rw, r)
	return true
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// printable quotes the start of b for a log line.
func printable(b []byte, n int) string {
	if len(b) > n {
		return strconv.Quote(string(b[:n])) + "..."
	}
	return strconv.Quote(string(b))
}
