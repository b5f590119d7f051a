package workerkit

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
)

var (
	// ErrGroupClosed is returned by Join and Broadcast after Close.
	ErrGroupClosed = errors.New("workerkit: group closed")

	errJoinUnsupported = fmt.Errorf("workerkit: Join needs the http.ResponseWriter workerkit gave the handler: %w", http.ErrNotSupported)
	errJoinLength      = errors.New("workerkit: Join: the response has a Content-Length, but a group member's body has no end")
)

// Group is a set of open responses that receive the same bytes: server-sent
// events, long polls, live logs, chat. The worker sends each Broadcast as one
// reply frame naming up to 128 connections, so one message reaches many
// clients for the cost of one, and the responses hold no handler slot while
// they wait.
//
// A typical server-sent events handler:
//
//	var listeners workerkit.Group
//
//	func events(w http.ResponseWriter, r *http.Request) {
//		w.Header().Set("Content-Type", "text/event-stream")
//		io.WriteString(w, ": joined\n\n")
//		if err := listeners.Join(w, r); err != nil {
//			http.Error(w, err.Error(), http.StatusServiceUnavailable)
//		}
//	}
//
//	// elsewhere, from any goroutine:
//	listeners.Broadcast([]byte("data: hello\n\n"))
//
// The zero value is an empty group ready to use; a Group is safe for
// concurrent use and must not be copied after first use. One Group may hold
// responses from several front ends and several Workers.
type Group struct {
	// sendMu serialises what members receive (Broadcast, Close), so that
	// every member sees the same bytes in the same order.
	sendMu sync.Mutex
	mu     sync.Mutex // guards what follows
	parts  map[partKey]*part
	n      int
	closed bool
}

// partKey sorts members by what one reply frame can reach: the same front
// end, the same sender, and the same body framing.
type partKey struct {
	fe     *frontEndConn
	sender string
	raw    bool // HTTP/1.0 client: raw bytes until close, not chunks
}

type part struct{ members []*member }

// member is one response that joined a group.
type member struct {
	g      *Group
	key    partKey
	connID string
	fl     *flight
	idx    int         // position in its part (guarded by g.mu)
	left   bool        // guarded by g.mu
	stop   func() bool // stops the disconnect watch; set before anyone else sees the member
}

// Join hands the response over to the group. It sends the response head
// (the status the handler set, 200 if none, and its headers; the body is
// chunked, or for an HTTP/1.0 client delimited by closing the connection)
// and whatever the handler wrote so far, and then detaches the response from
// the handler: the handler returns, the client stays connected and receives
// every later Broadcast. Call it from the handler, like any method of w.
// After Join, writing to w fails.
//
// The member leaves when its client goes away (the front end's disconnect
// notice or control DISCONNECT, which also cancels r.Context()), when its
// front end goes away, when the group is closed, and when the worker shuts
// down; the last two end its response properly, so that clients such as
// EventSource reconnect.
//
// Join fails, leaving the response with the handler, for a HEAD request or
// a status without a body (http.ErrBodyNotAllowed), a declared
// Content-Length, a client already gone, a closed group (ErrGroupClosed), a
// worker that is shutting down, and a ResponseWriter that is not
// workerkit's (an error wrapping http.ErrNotSupported: plain net/http cannot
// detach a response from its handler). Middleware that wraps w must provide
// Unwrap() http.ResponseWriter, as for http.ResponseController.
func (g *Group) Join(w http.ResponseWriter, r *http.Request) error {
	rw := unwrapResponseWriter(w)
	if rw == nil {
		return errJoinUnsupported
	}
	if rw.joined {
		return errJoined
	}
	if rw.fl == nil {
		return errJoinUnsupported
	}
	if rw.isHEAD || (r != nil && r.Method == http.MethodHead) {
		return http.ErrBodyNotAllowed
	}
	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	if !rw.bodyAllowed() {
		return http.ErrBodyNotAllowed
	}
	if rw.cl >= 0 {
		return errJoinLength
	}
	if rw.err != nil {
		return rw.err
	}
	if rw.ctx.Err() != nil {
		return errClientGone
	}
	g.mu.Lock()
	closed := g.closed
	g.mu.Unlock()
	if closed {
		return ErrGroupClosed
	}
	// The head and what was written so far, before any broadcast: a
	// Broadcast sees the member only after these frames are queued, and
	// the reply socket's owner sends in queue order.
	err := rw.emit(rw.buf, nil, false)
	rw.buf = rw.buf[:0]
	if err != nil {
		return err
	}
	s := rw.fe.s
	m := &member{g: g, key: partKey{rw.fe, rw.sender, !rw.chunked}, connID: rw.connID, fl: rw.fl}

	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return ErrGroupClosed // the handler's return ends the response
	}
	s.mu.Lock()
	stopping := s.membersClosed
	if !stopping {
		s.members[m] = struct{}{}
	}
	s.mu.Unlock()
	if stopping {
		g.mu.Unlock()
		return errWorkerStopped
	}
	if g.parts == nil {
		g.parts = make(map[partKey]*part)
	}
	p := g.parts[m.key]
	if p == nil {
		p = &part{}
		g.parts[m.key] = p
	}
	m.idx = len(p.members)
	p.members = append(p.members, m)
	g.n++
	// Registered under g.mu: the callback (which takes g.mu) cannot remove
	// the member before m.stop is set, even if the client is already gone.
	m.stop = context.AfterFunc(rw.ctx, func() {
		if g.remove(m) {
			m.done()
		}
	})
	g.mu.Unlock()

	rw.joined = true
	rw.err = errJoined
	return nil
}

// unwrapResponseWriter finds workerkit's writer under middleware wrappers.
func unwrapResponseWriter(w http.ResponseWriter) *responseWriter {
	for range 100 {
		switch v := w.(type) {
		case *responseWriter:
			return v
		case interface{ Unwrap() http.ResponseWriter }:
			w = v.Unwrap()
		default:
			return nil
		}
	}
	return nil
}

// Broadcast sends p to every member, as one chunk of their responses: for
// each front end and sender, one reply frame per 128 members (frames carry
// at most 256 KiB of p; a larger p is cut). An empty p sends nothing, as an
// empty chunk would end the responses. Broadcast blocks while the front ends
// are behind, and is not limited by the flow-control windows of the members'
// requests. It returns ErrGroupClosed after Close, or an error if some front
// end could not take the frames (its worker stopped).
func (g *Group) Broadcast(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	g.sendMu.Lock()
	defer g.sendMu.Unlock()
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return ErrGroupClosed
	}
	type target struct {
		key partKey
		ids []string
	}
	targets := make([]target, 0, len(g.parts))
	for k, pt := range g.parts {
		if len(pt.members) == 0 {
			continue
		}
		ids := make([]string, len(pt.members))
		for i, m := range pt.members {
			ids[i] = m.connID
		}
		targets = append(targets, target{k, ids})
	}
	g.mu.Unlock()

	var firstErr error
	for _, t := range targets {
		if err := sendToAll(t.key, t.ids, p); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

// sendToAll sends p as body bytes (one chunk per frame for chunked members)
// to the connections ids of one part.
func sendToAll(key partKey, ids []string, p []byte) error {
	for off := 0; off < len(p); off += maxMsgBody {
		piece := p[off:min(off+maxMsgBody, len(p))]
		for i := 0; i < len(ids); i += mongrel2.MaxReplyTargets {
			f := getFrame()
			f.b = mongrel2.AppendReply(f.b, key.sender, ids[i:min(i+mongrel2.MaxReplyTargets, len(ids))], nil)
			if !key.raw {
				f.b = strconv.AppendUint(f.b, uint64(len(piece)), 16)
				f.b = append(f.b, '\r', '\n')
			}
			f.b = append(f.b, piece...)
			if !key.raw {
				f.b = append(f.b, '\r', '\n')
			}
			if err := pushFrame(key.fe, f); err != nil {
				return err
			}
		}
	}
	return nil
}

// sendEnd ends the responses of ids: the last chunk, or for HTTP/1.0
// clients an empty reply, which closes the connection.
func sendEnd(key partKey, ids []string) error {
	for i := 0; i < len(ids); i += mongrel2.MaxReplyTargets {
		f := getFrame()
		f.b = mongrel2.AppendReply(f.b, key.sender, ids[i:min(i+mongrel2.MaxReplyTargets, len(ids))], nil)
		if !key.raw {
			f.b = append(f.b, "0\r\n\r\n"...)
		}
		if err := pushFrame(key.fe, f); err != nil {
			return err
		}
	}
	return nil
}

// pushFrame queues a frame for fe's reply socket.
func pushFrame(fe *frontEndConn, f *frame) error {
	select {
	case fe.out <- f:
		return nil
	case <-fe.dead:
		putFrame(f)
		return errWorkerStopped
	}
}

// Len returns the number of members.
func (g *Group) Len() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.n
}

// Close ends every member's response (the last chunk: clients see a
// complete response) and closes the group: later Joins and Broadcasts
// return ErrGroupClosed. Close is idempotent.
func (g *Group) Close() {
	g.sendMu.Lock()
	defer g.sendMu.Unlock()
	g.mu.Lock()
	g.closed = true
	var all []*member
	for _, p := range g.parts {
		all = append(all, p.members...)
	}
	g.mu.Unlock()
	g.end(all)
}

// end removes ms from the group, ends their responses and releases them.
// The caller holds g.sendMu.
func (g *Group) end(ms []*member) {
	byKey := make(map[partKey][]*member)
	for _, m := range ms {
		if g.remove(m) {
			byKey[m.key] = append(byKey[m.key], m)
		}
	}
	for key, list := range byKey {
		ids := make([]string, len(list))
		for i, m := range list {
			ids[i] = m.connID
		}
		if err := sendEnd(key, ids); err != nil {
			key.fe.log.Debug("ending group members", "err", err, "members", len(ids))
		}
		for _, m := range list {
			m.done()
		}
	}
}

// remove takes m out of the group; false if it had left already.
func (g *Group) remove(m *member) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if m.left {
		return false
	}
	m.left = true
	p := g.parts[m.key]
	last := len(p.members) - 1
	p.members[m.idx] = p.members[last]
	p.members[m.idx].idx = m.idx
	p.members[last] = nil
	p.members = p.members[:last]
	if last == 0 {
		delete(g.parts, m.key)
	}
	g.n--
	return true
}

// done releases what a member held once it has left its group.
func (m *member) done() {
	m.stop()
	s := m.key.fe.s
	s.mu.Lock()
	delete(s.members, m)
	s.mu.Unlock()
	s.unregister(m.fl)
	m.fl.cancel()
}

// endMembers ends every member's response at shutdown and makes Join fail
// from now on.
func (s *server) endMembers() {
	s.mu.Lock()
	s.membersClosed = true
	byGroup := make(map[*Group][]*member)
	for m := range s.members {
		byGroup[m.g] = append(byGroup[m.g], m)
	}
	s.mu.Unlock()
	n := 0
	for g, ms := range byGroup {
		g.sendMu.Lock()
		g.end(ms)
		g.sendMu.Unlock()
		n += len(ms)
	}
	if n > 0 {
		s.log.Info("ended the responses of group members", "count", n)
	}
}

// dropMembers removes fe's members without a word: fe cannot hear us.
// Called by fe's reply socket owner, so it must not wait for g.sendMu (a
// Broadcast holding it may be waiting for that very owner).
func (s *server) dropMembers(fe *frontEndConn) {
	s.mu.Lock()
	var ms []*member
	for m := range s.members {
		if m.key.fe == fe {
			ms = append(ms, m)
		}
	}
	s.mu.Unlock()
	for _, m := range ms {
		if m.g.remove(m) {
			m.done()
		}
	}
	if len(ms) > 0 {
		fe.log.Warn("dropped group members of a front end that went away", "count", len(ms))
	}
}
