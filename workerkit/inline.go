package workerkit

import (
	"sync"
	"sync/atomic"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
)

// Inline requests: a request whose handler is cheap runs on the goroutine
// that received it, and its reply goes out from there too (sendDirect), so
// that it costs one goroutine, as a single-loop worker does, instead of
// three (request socket owner, handler, reply socket owner): each hand-off
// between them can wake another OS thread, which costs more than such a
// handler's own work.
//
// While a request runs inline nobody reads the request socket, so other
// requests, and this one's disconnect notice, wait. Two things bound that:
//
//   - only handlers that have been cheap lately run inline: the server
//     keeps a moving average of handler run times (noteCost), and at or
//     above inlineCostMax every request is handed to a handler goroutine
//     as before; requests acknowledged over the control channel, streamed
//     uploads and WebSocket handshakes never run inline;
//   - a watchdog looks at the inline run every inlineWatch; one that was
//     already running at its last look loses the request socket: a new
//     goroutine takes over receiving (reqLoop.takeOver), and the one
//     running the handler ends when the handler returns. So a slow handler
//     delays the requests behind it by at most two periods, and only as
//     long as the average says handlers are cheap (its run counts in the
//     average).
//
// The request socket and its loop state (reqLoop) belong to exactly one
// goroutine at a time, the leader; the watchdog hands it on only by taking
// the run marker (run) from the leader, which the leader checks when its
// handler returns.

// inlineCostMax is the average handler run time below which requests run
// inline. A variable for tests only (set before a worker starts).
var inlineCostMax = 50 * time.Microsecond

const (
	// costCap bounds what one run adds to the average: one very slow
	// handler keeps requests off the inline path for a while, not forever.
	costCap = 20 * time.Millisecond
	// costWeight is the weight of the newest run in the average: 1/costWeight.
	costWeight = 16
	// inlineWatch is how often the watchdog looks at an inline run.
	inlineWatch = 5 * time.Millisecond
)

// noteCost adds a handler's run time to the server's moving average.
// Concurrent updates may lose one another, which an estimate can afford.
func (s *server) noteCost(d time.Duration) {
	d = min(d, costCap)
	old := s.handlerCost.Load()
	s.handlerCost.Store(old + (int64(d)-old)/costWeight)
}

// inlineCandidate reports whether a request may ever run inline (admit
// sets flight.inlineOK from it). One acknowledged over the control channel
// (a window) may not: its ACK wakes the control owner's goroutine anyway,
// and running it inline saved no CPU there, only added thread switches;
// nor a streamed upload, nor a WebSocket handshake, whose handler runs for
// the whole session.
func inlineCandidate(noInline bool, window int64, stream bool, method string) bool {
	return !noInline && window == 0 && !stream && method != mongrel2.MethodWebSocketHandshake
}

// inlineFits reports whether fl runs on the goroutine that received it:
// it may, and handlers have been cheap lately.
func (s *server) inlineFits(fl *flight) bool {
	return fl.inlineOK && s.handlerCost.Load() < int64(inlineCostMax)
}

// reqLoop is a request socket and the state of its receive loop, which
// moves between goroutines (see above).
type reqLoop struct {
	fe        *frontEndConn
	sock      *zmq.Socket
	gate      *bindGate // bind mode, else nil
	in        *socketReader
	connected bool

	// runs counts the inline runs started; run is the number of the one
	// in progress, 0 between runs, -1 once the watchdog took the loop
	// away from a run.
	runs, run atomic.Int64
	// idle: the watchdog sleeps until the next inline run (wake).
	idle atomic.Bool
	wake chan struct{}
	done chan struct{} // closed by the last leader when the loop ends
}

func newReqLoop(fe *frontEndConn, sock *zmq.Socket, gate *bindGate, in *socketReader) *reqLoop {
	return &reqLoop{fe: fe, sock: sock, gate: gate, in: in, connected: gate != nil,
		wake: make(chan struct{}, 1), done: make(chan struct{})}
}

// runLoop runs the receive loop until it ends, on goroutines of its own.
func (l *reqLoop) runLoop() {
	if !l.fe.s.noInline {
		go l.watch()
	}
	go l.lead()
	<-l.done
}

// serve runs fl, which holds a handler slot: inline if it fits, else on a
// handler goroutine. false means this goroutine lost the loop meanwhile.
func (l *reqLoop) serve(fl *flight) bool {
	s := l.fe.s
	if !s.inlineFits(fl) {
		s.start(fl)
		return true
	}
	if !s.prepare(fl) {
		return true
	}
	if s.sessions != nil && s.sessions.route(fl) {
		return true
	}
	if testHookInline != nil {
		testHookInline(fl.key.connID)
	}
	n := l.runs.Add(1)
	l.run.Store(n)
	if l.idle.Load() && l.idle.CompareAndSwap(true, false) {
		l.wake <- struct{}{}
	}
	s.serveRequest(fl, true)
	return l.run.CompareAndSwap(n, 0)
}

// testHookInline, when set by tests, is called when a request is about to
// run inline.
var testHookInline func(connID string)

// takeOver is the life of a goroutine that took the loop from a slow
// inline run.
func (l *reqLoop) takeOver() {
	l.fe.log.Debug("a request running inline is slow: another goroutine takes over receiving")
	l.lead()
}

// watch is the watchdog: it ticks while requests run inline and sleeps
// once a whole period passed without one starting.
func (l *reqLoop) watch() {
	t := time.NewTicker(inlineWatch)
	defer t.Stop()
	last, lastRuns := l.run.Load(), l.runs.Load()
	for {
		select {
		case <-t.C:
		case <-l.done:
			return
		}
		v := l.run.Load()
		if v > 0 && v == last && l.run.CompareAndSwap(v, -1) {
			go l.takeOver()
		}
		last = v
		if r := l.runs.Load(); r != lastRuns {
			lastRuns = r
			continue
		}
		t.Stop()
		l.idle.Store(true)
		if l.run.Load() <= 0 && l.runs.Load() == lastRuns {
			select {
			case <-l.wake:
			case <-l.done:
				return
			}
		} else if !l.idle.CompareAndSwap(true, false) {
			<-l.wake // a run started and its leader is waking us
		}
		t.Reset(inlineWatch)
		last, lastRuns = l.run.Load(), l.runs.Load()
	}
}

// replySocket is a front end's reply socket as goroutines other than its
// owner see it: they may send on it while they hold mu, which the owner
// holds whenever it uses the socket. sock is nil before the socket is up
// and once it is closing.
type replySocket struct {
	mu   sync.Mutex
	sock *zmq.Socket
}

// sendDirect publishes f on the reply socket from the calling goroutine if
// the socket is free and takes f at once; otherwise it returns false and f
// is still the caller's, for the owner's queue. Never waiting here keeps a
// request running inline from waiting behind the owner's blocked send.
func (fe *frontEndConn) sendDirect(f *frame) bool {
	r := &fe.reply
	if !r.mu.TryLock() {
		return false
	}
	if r.sock == nil {
		r.mu.Unlock()
		return false
	}
	err := sendFrame(r.sock, f, zmq.DONTWAIT)
	r.mu.Unlock()
	if err != nil {
		return false // the owner retries it, and reports what stays wrong
	}
	putFrame(f)
	return true
}
