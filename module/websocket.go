package caddyzmq

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/wsframe"
	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
	"github.com/zmqbridge/caddy-zmq/module/internal/httpreply"
)

// WebSockets follow Mongrel2's handler protocol (src/connection.c,
// src/websocket.c): Caddy does not answer the upgrade itself. The worker
// gets METHOD WEBSOCKET_HANDSHAKE with the request's headers and the
// computed Sec-WebSocket-Accept as body, and replies with the raw 101. From
// then on each client message (unmasked, fragments reassembled) is a
// METHOD WEBSOCKET request with FLAGS "0x%X" of its first byte; each reply
// body is written to the client as is (the worker writes whole frames), and
// an empty reply closes the connection.

// DefaultWebSocketMaxMessage bounds a client message; past it the client
// gets close 1009.
const DefaultWebSocketMaxMessage = 16 << 20

// wsCloseWait bounds how long, after the client sent close, Caddy waits for
// the worker to end the connection before it does.
const wsCloseWait = 5 * time.Second

// wsShutdownWait bounds how long a stopping transport waits for its
// WebSockets to write their close frame.
const wsShutdownWait = 2 * time.Second

// isWebSocketUpgrade detects an upgrade as Mongrel2 does: Sec-WebSocket-Key,
// Sec-WebSocket-Version and Host present, Upgrade "websocket" (any case),
// Connection containing "upgrade". Only HTTP/1.1 connections can be taken
// over (docs/websockets.md says what HTTP/2 and HTTP/3 clients get).
func isWebSocketUpgrade(r *http.Request) bool {
	if r.ProtoMajor != 1 || r.ProtoMinor != 1 {
		return false
	}
	h := r.Header
	if h.Get("Sec-Websocket-Key") == "" || h.Get("Sec-Websocket-Version") == "" || r.Host == "" {
		return false
	}
	if !strings.EqualFold(h.Get("Upgrade"), "websocket") {
		return false
	}
	for _, v := range h.Values("Connection") {
		if strings.Contains(strings.ToLower(v), "upgrade") {
			return true
		}
	}
	return false
}

// wsSession is one WebSocket between a client and a worker.
type wsSession struct {
	h      *Handler
	t      *transport
	p      *poolRuntime
	ex     *exchange
	r      *http.Request
	connID string
	ip     string
	path   string

	noAck bool // no ACK came for the handshake (reader goroutine only)
	// dispatchBy: a worker must take the handshake by then (zero: no
	// dispatch deadline), as for requests.
	dispatchBy time.Time
	conn       wsConn
	// extended: an HTTP/2 or HTTP/3 extended CONNECT (websocket_h2.go).
	extended bool
	// writeMu is held for every write to the client: by the relay from
	// taking frames until they are written, by writeDirect, by Caddy's own
	// frames.
	writeMu sync.Mutex
	// direct writes frames from the reply socket's goroutine (nil: never);
	// directOff, under writeMu, once it must not any more.
	direct    *wsDirect
	directOff bool
	// owed: reply bytes written and not yet granted back to the worker.
	owed atomic.Int64

	// frames follows the worker's frames to the client, so that Caddy's
	// own frames go between them (websocket_keepalive.go); framesUnknown
	// when it cannot.
	frames        wsframe.Boundaries
	framesUnknown bool
	keep          *wsKeepalive

	msgHeaders map[byte][]byte // by FLAGS (headers); reader goroutine only
	// queued counts this socket's messages in the request socket owner's
	// queue: while there are any, the next one queues behind them instead
	// of being sent directly (transport.sendDirect).
	queued atomic.Int32
	// placed is the request a large client message is being read into
	// (websocket_place.go); reader goroutine only.
	placed wsPlaced
}

// serveWebSocket runs one WebSocket to its end.
func (h *Handler) serveWebSocket(w http.ResponseWriter, r *http.Request) error {
	s, reply, err := h.openWebSocket(w, r)
	if err != nil {
		return err
	}
	t := s.t
	defer t.unregister(s.ex)
	first := reply.bytes
	if !bytes.HasPrefix(first, []byte("HTTP/1.1 101 ")) {
		// The worker refused the upgrade with an ordinary response: it is
		// written as for any request, then the exchange ends.
		return s.relayRefusal(w, reply)
	}
	var br *bufio.Reader
	if s.extended {
		stream, rest, err := openExtendedStream(w, r, first)
		if err != nil {
			t.notifyDisconnect(s.ex)
			return wsError(r, http.StatusBadGateway, err)
		}
		s.conn, br, first = stream, bufio.NewReader(r.Body), rest
	} else {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.notifyDisconnect(s.ex)
			return wsError(r, http.StatusInternalServerError, fmt.Errorf("taking over the connection: %w", err))
		}
		// The server's read and write deadlines (Caddy's idle timeouts)
		// were set for HTTP; a quiet WebSocket must not trip them.
		_ = conn.SetDeadline(time.Time{})
		s.conn, br = conn, brw.Reader
	}
	// The client's bytes count as signs of life (websocket_idle_timeout).
	br = bufio.NewReader(&heardReader{r: br, k: s.keep})
	t.websockets.add()
	defer t.websockets.done()
	defer s.conn.Close()
	h.logger.Debug("websocket open", zap.String("conn_id", s.connID), zap.String("uri", r.RequestURI), zap.String("proto", r.Proto))
	if reply.closed {
		// The worker accepted and ended the socket at once.
		_ = s.write(first)
		return nil
	}
	s.run(br, first)
	return nil
}

// openWebSocket sends the handshake to the workers until one answers it,
// as serve does for a request: a pool that cannot take it (no worker,
// queues full) is left for the next, a handshake no worker took by its
// dispatch deadline is sent again, and one whose worker was lost (or hung)
// before answering is sent again within `retries` (a handshake is a GET,
// and its worker had said nothing yet). It returns the session, with its
// exchange registered, and the worker's answer.
func (h *Handler) openWebSocket(w http.ResponseWriter, r *http.Request) (*wsSession, handshakeReply, error) {
	var tried uint64
	lastErr := errNoWorker
	retries := 0
	replyBy := time.Now().Add(time.Duration(h.ReplyTimeout)) // for all attempts
	for {
		p := h.selectPool(r, w, tried)
		if p == nil {
			if h.awaitRedial(r.Context()) {
				tried = 0 // workers dialled again after a key removal
				continue
			}
			return nil, handshakeReply{}, wsError(r, http.StatusServiceUnavailable, lastErr)
		}
		s := h.newWSSession(p, r, retries < h.Retries)
		reply, err := s.handshake(replyBy)
		if err == nil {
			return s, reply, nil
		}
		s.t.unregister(s.ex)
		switch {
		case errors.Is(err, errNoWorker), errors.Is(err, errQueueFull):
			tried |= 1 << h.poolIndex(p)
			lastErr = fmt.Errorf("pool %s: %w", p.Name, err)
		case errors.Is(err, errNotTaken):
			p.metrics().resends.Inc()
			h.logger.Debug("re-sending a WebSocket handshake no worker took in time", zap.String("uri", r.RequestURI))
		case errors.Is(err, errWorkerHung):
			// Taken back only while the budget allows (newWSSession); not
			// counted, as for requests: the hung worker was told to drop it.
			p.metrics().retriesHung.Inc()
			h.logger.Warn("retrying a WebSocket handshake taken back from a hung worker", zap.String("uri", r.RequestURI))
		case errors.Is(err, errWorkerLost) && retries < h.Retries:
			retries++
			p.metrics().retriesLost.Inc()
			h.logger.Warn("retrying a WebSocket handshake after losing its worker", zap.String("uri", r.RequestURI),
				zap.Int("retries", retries))
		default:
			return nil, handshakeReply{}, wsError(r, handshakeStatus(err), err)
		}
	}
}

// newWSSession is a session on pool p with a fresh exchange (its
// connection id); retryable lets a hung worker's handshake be taken back
// (only until it is answered).
func (h *Handler) newWSSession(p *poolRuntime, r *http.Request, retryable bool) *wsSession {
	t := p.transport
	ex := t.register(int(h.MaxBufferedReply), retryable)
	s := &wsSession{h: h, t: t, p: p, ex: ex, r: r,
		connID: string(mongrel2.AppendUint(nil, ex.id)), ip: clientIP(r), path: r.URL.EscapedPath(),
		keep: newKeepalive(time.Duration(h.WebSocketPingInterval), time.Duration(h.WebSocketIdleTimeout))}
	if isExtendedConnect(r) {
		// The worker sees the HTTP/1.1 upgrade it knows (as reverse_proxy
		// sends upstream); its 101 becomes the 200 of the CONNECT.
		s.extended = true
		s.r = asUpgrade(r)
	}
	return s
}

// handshake sends the session's WEBSOCKET_HANDSHAKE and waits for the
// worker's answer. A failure after the send tells the worker the client is
// gone, so that a worker that takes the handshake late drops it.
func (s *wsSession) handshake(replyBy time.Time) (handshakeReply, error) {
	t := s.t
	if t.control != nil {
		s.ex.expectAck("")
		if s.h.DispatchTimeout > 0 && t.control.coversPeers() {
			s.dispatchBy = time.Now().Add(time.Duration(s.h.DispatchTimeout))
		}
	}
	accept := wsframe.AcceptKey(s.r.Header.Get("Sec-Websocket-Key"))
	if err := t.submit(s.message(mongrel2.MethodWebSocketHandshake, 0, []byte(accept)), s.ex); err != nil {
		return handshakeReply{}, err
	}
	reply, err := s.awaitHandshake(replyBy)
	if err != nil {
		t.notifyDisconnect(s.ex)
	}
	return reply, err
}

// handshakeStatus is the client's status for a handshake that failed.
func handshakeStatus(err error) int {
	switch {
	case errors.Is(err, errReplyTimeout):
		return http.StatusGatewayTimeout
	case errors.Is(err, errNoWorker), errors.Is(err, errStopped), errors.Is(err, errQueueFull):
		return http.StatusServiceUnavailable
	}
	return http.StatusBadGateway
}

// wsError hands a failed handshake to Caddy's error handling (handle_errors,
// its error log), as the handler's other failures are.
func wsError(r *http.Request, status int, err error) error {
	if r.Context().Err() != nil {
		status = statusClientClosed
	}
	return caddyhttp.Error(status, fmt.Errorf("zmq: websocket: %w", err))
}

var (
	errReplyTimeout  = errors.New("no reply to the WebSocket handshake within reply_timeout")
	errHandshakeHead = fmt.Errorf("the worker's reply to a WebSocket handshake has no end of head within %d bytes", httpreply.MaxHeadSize)
)

// handshakeReply is the worker's answer to a handshake: its bytes, from
// the status line to at least the end of its head, and whether the worker
// ended the connection (an empty reply) right after them.
type handshakeReply struct {
	bytes  []byte
	closed bool
}

// awaitHandshake gathers the worker's reply frames until its head is
// whole (a 101's head may come in several messages: Caddy must know where
// its frames start), the worker ends the connection, or the handshake
// fails.
func (s *wsSession) awaitHandshake(replyBy time.Time) (handshakeReply, error) {
	timer := time.NewTimer(time.Until(replyBy))
	defer timer.Stop()
	var dispatchC <-chan time.Time
	if !s.dispatchBy.IsZero() {
		dt := time.NewTimer(time.Until(s.dispatchBy) + dispatchGrace)
		defer dt.Stop()
		dispatchC = dt.C
	}
	var reply handshakeReply
	for {
		select {
		case <-s.ex.signal:
		case <-dispatchC:
			if len(reply.bytes) == 0 && s.ex.giveUpDispatch() {
				return reply, errNotTaken
			}
			continue
		case <-timer.C:
			return reply, errReplyTimeout
		case <-s.r.Context().Done():
			return reply, s.r.Context().Err()
		}
		frames, err := s.ex.take(nil)
		for i, qf := range frames {
			if len(qf.body) == 0 {
				reply.closed = true
				s.releaseRest(frames[i:])
				break
			}
			reply.bytes = append(reply.bytes, qf.body...)
			qf.frame.release()
		}
		headDone := httpreply.HeadEnd(reply.bytes) >= 0
		switch {
		case reply.closed && !headDone:
			return reply, errors.New("the worker ended the WebSocket handshake inside its reply's head")
		case headDone:
			return reply, nil
		case len(reply.bytes) > httpreply.MaxHeadSize:
			return reply, errHandshakeHead
		case err != nil:
			return reply, err
		}
	}
}

// relayRefusal writes a non-101 reply through the ordinary response path.
func (s *wsSession) relayRefusal(w http.ResponseWriter, reply handshakeReply) error {
	var st requestState
	rr := &st.rr
	defer rr.Release()
	rr.Reset(w, false)
	timer := time.NewTimer(time.Duration(s.h.ReplyTimeout))
	defer timer.Stop()
	frames := [][]byte{reply.bytes}
	if reply.closed {
		frames = append(frames, nil) // Mongrel2's close, after the reply
	}
	for {
		for _, body := range frames {
			if err := rr.Feed(body); err != nil {
				s.t.notifyDisconnect(s.ex)
				if !rr.HeadDone() {
					return wsError(s.r, http.StatusBadGateway, fmt.Errorf("bad reply to a WebSocket handshake: %w", err))
				}
				return nil
			}
			if rr.Done() {
				return nil
			}
		}
		select {
		case <-s.ex.signal:
		case <-timer.C:
			s.t.notifyDisconnect(s.ex)
			return nil
		case <-s.r.Context().Done():
			s.t.notifyDisconnect(s.ex)
			return nil
		}
		queued, err := s.ex.take(nil)
		frames = frames[:0]
		for _, qf := range queued {
			frames = append(frames, bytes.Clone(qf.body))
			qf.frame.release()
		}
		if err != nil && len(frames) == 0 {
			return nil
		}
	}
}

// message encodes one request for the worker: the handshake's headers
// with METHOD set, FLAGS for a WebSocket message.
func (s *wsSession) message(method string, flags byte, body []byte) *[]byte {
	headers := s.headers(method, flags)
	buf := requestFrames.get()
	if need := len(s.p.sender) + len(s.connID) + len(s.path) + len(headers) + len(body) + 48; cap(*buf) < need {
		*buf = make([]byte, 0, need) // one allocation for a large message
	}
	*buf = mongrel2.AppendRequest(*buf, s.p.sender, s.connID, s.path, headers, body)
	return buf
}

// headers encodes the header block of a request of the session. The
// handshake's headers do not change, so those of WEBSOCKET messages are
// encoded once per FLAGS value (a handful: the opcodes and FIN) and
// reused; only the reader goroutine sends WEBSOCKET messages.
func (s *wsSession) headers(method string, flags byte) []byte {
	reuse := method == mongrel2.MethodWebSocket
	if b, ok := s.msgHeaders[flags]; reuse && ok {
		return b
	}
	var enc mongrel2.HeaderEncoder
	r2 := *s.r
	r2.Method = method
	control := s.p.ControlEndpoint != ""
	var dispatchBy time.Time // the handshake's only
	if method == mongrel2.MethodWebSocketHandshake {
		dispatchBy = s.dispatchBy
	}
	s.h.encodeHeaders(&enc, &r2, s.path, 0, s.ip, control, dispatchBy, nil, false)
	// Hop-by-hop for HTTP, but Mongrel2 passes them: the handshake is
	// the handler's to answer.
	enc.Add("connection", s.r.Header.Get("Connection"))
	enc.Add("upgrade", s.r.Header.Get("Upgrade"))
	if flags != 0 {
		enc.Add(mongrel2.HeaderFlags, mongrel2.FormatFlags(flags))
	}
	b := bytes.Clone(enc.Bytes())
	if reuse {
		if s.msgHeaders == nil {
			s.msgHeaders = make(map[byte][]byte, 4)
		}
		s.msgHeaders[flags] = b
	}
	return b
}

// wsEnd says why a WebSocket ended, and what the client is told.
type wsEnd struct {
	code   int    // close frame to send; 0 sends none
	reason string // for the close frame and the log
	notify bool   // tell the worker the client is gone
}

// run relays until either side ends the WebSocket.
func (s *wsSession) run(br *bufio.Reader, first []byte) {
	readerDone := make(chan wsEnd, 1)
	if err := s.write(first); err != nil {
		s.t.notifyDisconnect(s.ex)
		return
	}
	s.followFirst(first)
	// Before the client's first message can reach the worker: its answer
	// may come at once, and one that finds no direct writer is queued,
	// and every frame behind it with it.
	if s.direct = newWSDirect(s.conn); s.direct != nil {
		s.ex.setDirect(s.writeDirect)
	}
	go func() { readerDone <- s.readClient(br) }()
	end := s.relayReplies(readerDone)
	s.ex.setDirect(nil)
	if end.code != 0 {
		s.writeClose(end)
	}
	if end.notify {
		s.t.notifyDisconnect(s.ex)
	}
	_ = s.conn.Close() // ends the reader
	s.h.logger.Debug("websocket closed", zap.String("conn_id", s.connID), zap.Int("code", end.code), zap.String("reason", end.reason))
}

// relayReplies writes the worker's frames to the client until the worker
// closes, the client goes, or the exchange fails.
func (s *wsSession) relayReplies(readerDone <-chan wsEnd) wsEnd {
	var closeBy <-chan time.Time
	creditBatch := int(s.h.ReplyWindow / 4)
	var frames []queuedFrame
	keepalive := s.keep.start()
	defer s.keep.stop()
	defer s.endDirect()
	for {
		select {
		case <-s.ex.signal:
		case <-keepalive:
			if end, over := s.keepaliveTick(); over {
				return end
			}
			continue
		case end := <-readerDone:
			if end.code == -1 {
				// The client sent close: the worker answers it and ends the
				// connection, or Caddy does after wsCloseWait.
				timer := time.NewTimer(wsCloseWait)
				defer timer.Stop()
				closeBy = timer.C
				readerDone = nil
				continue
			}
			return end
		case <-closeBy:
			return wsEnd{notify: true, reason: "worker did not close after the client's close"}
		}
		end, over := s.writeQueued(&frames)
		if over {
			return end
		}
		if s.t.control != nil && s.owed.Load() >= int64(creditBatch) {
			if wk := s.ex.workerID(); wk != "" {
				s.t.control.credit(wk, s.ex.id, int(s.owed.Swap(0)))
			}
		}
	}
}

// writeQueued writes the frames queued for the client, holding writeMu
// from taking them until they are written so that writeDirect cannot put a
// later frame before them.
func (s *wsSession) writeQueued(frames *[]queuedFrame) (wsEnd, bool) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	fs, err := s.ex.take((*frames)[:0])
	*frames = fs
	for i, qf := range fs {
		empty := len(qf.body) == 0
		werr := error(nil)
		if !empty {
			werr = s.writeLocked(qf.body)
			s.frames.Write(qf.body)
			s.owed.Add(int64(len(qf.body)))
		}
		qf.frame.release()
		fs[i].frame = nil
		if empty || werr != nil {
			// Nothing may follow the worker's end, or a failed write:
			// no direct write either, from the moment writeMu is let go.
			s.directOff = true
			s.releaseRest(fs[i+1:])
			if empty {
				return wsEnd{reason: "worker closed"}, true
			}
			return wsEnd{notify: true, reason: "client write failed"}, true
		}
	}
	if err != nil {
		s.directOff = true
		return s.failEnd(err), true
	}
	return wsEnd{}, false
}

func (s *wsSession) releaseRest(frames []queuedFrame) {
	for i, qf := range frames {
		qf.frame.release()
		frames[i].frame = nil
	}
}

// failEnd maps an exchange error to a close code: 1001 when Caddy stops
// these sockets, 1013 when a message could not be queued to a worker that
// is alive but overloaded, 1011 when the worker is lost or misbehaves.
func (s *wsSession) failEnd(err error) wsEnd {
	s.h.logger.Warn("closing websocket", zap.String("conn_id", s.connID), zap.Error(err))
	switch {
	case errors.Is(err, errStopped):
		return wsEnd{code: wsframe.CloseGoingAway, reason: "server shutting down", notify: true}
	case errors.Is(err, errReqNotQueued):
		return wsEnd{code: wsframe.CloseTryAgainLater, reason: "worker overloaded", notify: true}
	}
	return wsEnd{code: wsframe.CloseInternalError, reason: "worker lost", notify: true}
}

// write sends bytes to the client; the reader may write close frames too.
// A client that takes none of them for websocket_idle_timeout is gone.
func (s *wsSession) write(b []byte) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	return s.writeLocked(b)
}

func (s *wsSession) writeLocked(b []byte) error {
	if s.keep.idle > 0 {
		_ = s.conn.SetWriteDeadline(time.Now().Add(s.keep.idle))
	}
	_, err := s.conn.Write(b)
	return err
}

// writeClose sends the close frame of end, if the worker's last frame is
// whole: a close frame inside a half-written one would garble both, so the
// client then gets a TCP close (1006 to it) instead.
func (s *wsSession) writeClose(end wsEnd) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if !s.betweenFrames() {
		s.h.logger.Debug("websocket closed mid-frame: no close frame", zap.String("conn_id", s.connID), zap.Int("code", end.code))
		return
	}
	_ = s.conn.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = s.conn.Write(wsframe.AppendClose(nil, end.code, end.reason))
}

// readClient forwards the client's messages to the worker until the
// client closes (code -1: the worker answers), goes away, or breaks the
// protocol.
func (s *wsSession) readClient(br *bufio.Reader) wsEnd {
	rd := wsframe.NewReader(br, s.h.WebSocketMaxMessage)
	rd.Buffers = wsBuffers
	rd.Place = s.place
	defer s.placed.free()
	for {
		m, err := rd.ReadMessage()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return wsEnd{} // we closed it
			}
			if wsframe.CloseCode(err) == 0 {
				return wsEnd{notify: true, reason: "client went away"}
			}
			s.h.logger.Info("websocket client broke the protocol", zap.String("conn_id", s.connID), zap.Error(err))
			return wsEnd{code: wsframe.CloseCode(err), reason: err.Error(), notify: true}
		}
		if isKeepalivePong(m) {
			continue // answers Caddy's ping, not the worker's
		}
		if s.placed.ready() {
			err = s.forwardPlaced()
		} else {
			err = s.forward(m)
			rd.Release(m.Payload) // forward copied it
		}
		if err != nil {
			return s.failEnd(err)
		}
		if m.Opcode() == wsframe.OpClose {
			return wsEnd{code: -1}
		}
	}
}

// forward sends one client message to the worker that took the handshake
// when the control channel knows it (affinity), else to any worker through
// PUSH, as Mongrel2 does.
func (s *wsSession) forward(m wsframe.Message) error {
	buf := s.message(mongrel2.MethodWebSocket, m.Flags, m.Payload)
	wk := ""
	if s.t.control != nil {
		wk = s.worker()
	}
	if wk == "" {
		return s.deliver("", ctlMsg{}, outMsg{buf: buf, ex: s.ex})
	}
	p := zmqx.AppendReq(make([]byte, 0, len(*buf)+8), *buf)
	requestFrames.put(buf)
	return s.deliver(wk, ctlMsg{worker: wk, payload: p, req: true}, outMsg{})
}

// deliver hands a client message over: as req over the control channel
// when wk is set, else as push through PUSH. It waits for room rather than
// drop a message (a client faster than the workers is slowed down through
// TCP); what the transport's stop leaves unsent it releases.
func (s *wsSession) deliver(wk string, req ctlMsg, push outMsg) error {
	if wk != "" {
		select {
		case s.t.control.in <- req:
			return nil
		case <-s.t.quit:
			req.release()
			return errStopped
		}
	}
	if s.queued.Load() == 0 && s.t.sendDirect(push) {
		return nil
	}
	push.queued = &s.queued
	s.queued.Add(1)
	select {
	case s.t.out <- push:
		return nil
	case <-s.t.quit:
		push.release()
		return errStopped
	}
}

// worker is the control-channel identity of the worker that took the
// handshake, waiting a moment for its ACK, which may trail its reply.
func (s *wsSession) worker() string {
	if wk := s.ex.workerID(); wk != "" || s.ex.acked == nil || s.noAck {
		return wk
	}
	timer := time.NewTimer(pendingWait)
	defer timer.Stop()
	select {
	case <-s.ex.acked:
	case <-timer.C:
		s.noAck = true // a plain Mongrel2 handler: it never comes
	}
	return s.ex.workerID()
}

// awaitWebSockets gives open WebSockets, whose exchanges just failed, up to
// d to write their close frame before the process may exit.
func (t *transport) awaitWebSockets(d time.Duration) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-t.websockets.zero():
	case <-timer.C:
	}
}
