package workerkit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/zmqbridge/caddy-zmq/internal/zmqio"
)

// The path of one request through the package, for maintainers:
//
//   - requests.go: the request socket's owner (runRequests, receive) reads a
//     frame;
//   - admission.go: admit parses it and registers its flight (flight.go);
//     takeSlot waits for a handler slot; start checks the dispatch deadline
//     and queues the ACK (control.go);
//   - handlers.go: run hands the flight to a handler goroutine; serveRequest
//     builds the http.Request (request.go) and calls the Handler; a cheap
//     handler runs inline instead, on the goroutine that received the
//     request, which also sends its reply (inline.go);
//   - response.go: the responseWriter frames the reply, paced by CREDIT
//     (flow.go), and hands it to the reply socket's owner (replies.go).
//
// Around it: ctlowner.go owns the control channel's DEALER (ACK, HB,
// UCREDIT out; CREDIT, DISCONNECT, REQ, BODY, PAUSE in), addressed.go runs
// requests addressed to this worker (REQ), upload.go streamed bodies,
// lease.go the liveness lease, bind.go bind mode, group.go Groups; this
// file starts and stops it all.

const (
	// hardGrace is how long Serve waits for handlers after cancelling their
	// contexts before it gives up on them.
	hardGrace = time.Second
	// heartbeat settings notice a dead or frozen front end at the transport
	// level, which turns into an unsubscription, which pauses the worker.
	heartbeatIvl     = time.Second
	heartbeatTimeout = 3 * time.Second
)

// server is one run of Worker.Serve.
type server struct {
	h       http.Handler
	log     *slog.Logger
	zctx    *zmq.Context
	fes     []*frontEndConn
	id      string // worker id on control channels
	maxConc int
	// noInline: Worker.NoInline (inline.go).
	noInline bool

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
	droppedLate, droppedUnacked, droppedUnconfirmed atomic.Int64
	// creditStalls counts the times a response waited for reply credit,
	// and how long.
	creditStalls stallCounter

	mu       sync.Mutex
	inflight map[flightKey]*flight
	// members are the responses that joined a Group; ended at shutdown.
	members       map[*member]struct{}
	membersClosed bool // shutting down: Join fails
	// websockets are the accepted WebSockets, by connection (websocket.go),
	// wsOpen their number, read without mu (deliverSeen).
	websockets map[flightKey]*WSConn
	wsOpen     atomic.Int32

	sessions *sessionTable // nil without Worker.PinnedSessions (pinned.go)

	handlerCost atomic.Int64 // moving average of handler run times, ns (inline.go)
}

// frontEndConn is the run-time state of one FrontEnd. Its request socket is
// owned by runRequests and its reply socket by runReplies, each for its
// whole life; everything shared between goroutines here is a channel or an
// atomic.
type frontEndConn struct {
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

	reply replySocket // the reply socket, for sendDirect (inline.go)
}

// serveUntil is Serve; a close of force (a second signal) cancels the running
// handlers at once instead of after ShutdownTimeout.
func (w *Worker) serveUntil(ctx context.Context, force <-chan struct{}) error {
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
		noInline: w.NoInline,
		sem:      make(chan struct{}, maxConc),
		stop:     make(chan struct{}),
		idle:     make(chan *flight),
		errc:     make(chan error, 2*len(w.FrontEnds)),
		base:     hardCtx,
		rcvHWM:   maxConc,
		inflight: make(map[flightKey]*flight),
		members:  make(map[*member]struct{}),
	}
	s.sessions = newSessionTable(s, w.PinnedSessions)
	nSockets := 0
	for i, f := range w.FrontEnds {
		fe := &frontEndConn{
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
	s.endWebSockets()

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
	if n, m, u := s.droppedLate.Load(), s.droppedUnacked.Load(), s.droppedUnconfirmed.Load(); n+m+u > 0 {
		s.log.Info("requests dropped unstarted (their front ends re-send them)",
			"past_dispatch_deadline", n, "not_acknowledgeable", m, "not_confirmed", u)
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
