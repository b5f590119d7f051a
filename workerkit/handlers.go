package workerkit

import (
	"net/http"
	"runtime"
	"time"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

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
	idle := time.NewTimer(handlerIdle)
	defer idle.Stop()
	for ok := true; ok; fl, ok = s.nextRequest(idle, time.Now()) {
		s.serveRequest(fl, false)
	}
}

// nextRequest waits for the next request of a handler goroutine that served
// its last one at last; false means the goroutine should exit: it has been
// idle for handlerIdle, or the worker is stopping. The idle timer is not
// reset per request (a reset takes the timer's lock and reorders the timer
// heap, on every request): when it fires early, it is set for the rest.
func (s *server) nextRequest(idle *time.Timer, last time.Time) (*flight, bool) {
	for {
		select {
		case fl := <-s.idle:
			return fl, true
		case <-idle.C:
			rest := handlerIdle - time.Since(last)
			if rest <= 0 {
				return nil, false
			}
			idle.Reset(rest)
		case <-s.stop:
			// Requests started from now on (those held at shutdown)
			// find no waiting goroutine and get their own.
			return nil, false
		}
	}
}

// serveRequest answers fl with the worker's handler, and notes how long
// that took (inline.go). direct: fl runs inline, on the goroutine that
// received it, which sends the reply itself when it can.
func (s *server) serveRequest(fl *flight, direct bool) {
	if !fl.inlineOK {
		// Never inline (a WebSocket session's handler runs for the
		// whole session): its run time says nothing about the others.
		s.serveFlight(fl, s.h, direct)
		return
	}
	t0 := time.Now()
	s.serveFlight(fl, s.h, direct)
	s.noteCost(time.Since(t0))
}

// serveWith answers fl with h and reports whether h returned normally (it
// did not panic).
func (s *server) serveWith(fl *flight, h http.Handler) bool { return s.serveFlight(fl, h, false) }

// serveFlight is serveWith; direct is serveRequest's.
func (s *server) serveFlight(fl *flight, h http.Handler, direct bool) (ok bool) {
	// flow and upload were set before this goroutine started, and stay.
	fe, req, ctx, flow, up := fl.key.fe, fl.req, fl.ctx, fl.flow, fl.upload
	fl.req, fl.ctx = nil, nil // a Group member keeps its flight, not the request
	joined := false
	slotFreed := false // an accepted WebSocket gave its slot back already
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
		if !slotFreed {
			<-s.sem
		}
		s.handlers.Done()
	}()
	if fl.confirmed != nil && !s.awaitConfirm(fl, ctx) {
		return true // not started, nothing to answer (confirm.go)
	}
	r, err := buildRequest(ctx, req)
	if err != nil {
		fe.log.Warn("bad request", "err", err, "conn", req.ConnID)
		rw := getResponseWriter(fe, ctx, req.Sender, req.ConnID, "", 1, 1)
		rw.flow = flow
		rw.errorResponse(http.StatusBadRequest, "Bad Request\n")
		rw.release()
		return true
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
				why = "the request has no " + zmqx.HeaderWindow
			}
			fe.log.Warn("streamed request body cannot be received: the handler's reads fail", "conn", req.ConnID, "reason", why)
			r.Body = failedBody{errUploadUnavailable}
		}
	}
	rw := getResponseWriter(fe, ctx, req.Sender, req.ConnID, r.Method, r.ProtoMajor, r.ProtoMinor)
	rw.flow, rw.fl, rw.direct = flow, fl, direct
	if r.Method == mongrel2.MethodWebSocketHandshake {
		r = prepareHandshake(rw, r, req.Body) // websocket.go
	}
	ok = s.runHandler(rw, r, h)
	slotFreed = rw.slotFreed // rw may be recycled before the deferred call
	if rw.ws != nil {
		// The WebSocket's methods may still be called from the handler's
		// goroutines: the writer is closed, not recycled.
		rw.ws.finish(ok)
		return ok
	}
	if ok {
		rw.finish()
	}
	if rw.joined {
		// The Group owns the response now; the writer is not recycled, as
		// the handler's goroutines might still hold it.
		joined = true
		return ok
	}
	rw.release()
	return ok
}

// runHandler calls the handler and reports whether it returned normally. A
// panic must cost one response, never the worker.
func (s *server) runHandler(rw *responseWriter, r *http.Request, h http.Handler) (ok bool) {
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
		if rw.ws != nil {
			return // its caller closes the WebSocket (1011)
		}
		rw.fail(abort)
	}()
	h.ServeHTTP(rw, r)
	return true
}
