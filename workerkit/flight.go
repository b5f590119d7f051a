package workerkit

import (
	"context"
	"sync/atomic"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
)

// flightKey finds the requests a disconnect or a credit is about. Control
// messages name the connection only (ids are unique per front end); a
// Mongrel2 notice also names the sender, which is checked on the flight.
type flightKey struct {
	fe     *frontEndConn
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
	// inlineOK: the request may run inline while handlers are cheap
	// (inline.go): no ACK, no streamed body, not a WebSocket handshake,
	// and inline requests are not turned off.
	inlineOK bool
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
	// wantConfirm: the request carries zmqx.HeaderConfirm. confirmed is
	// made, under server.mu, when its ACK is queued, and closed, under
	// server.mu too, on CONFIRM: then the handler starts (confirm.go).
	// ackSentAt: when the owner last sent its ACK (lease clock; owner
	// only).
	wantConfirm bool
	confirmed   chan struct{}
	ackSentAt   int64

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
func (s *server) flightsOf(fe *frontEndConn, fn func(*flight)) {
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
func (s *server) liftFlows(fe *frontEndConn) {
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
