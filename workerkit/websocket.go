package workerkit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/wsframe"
	"github.com/zmqbridge/caddy-zmq/internal/zmqio"
)

// WebSockets over the Mongrel2 protocol (docs/websockets.md). The front end
// sends the upgrade as METHOD WEBSOCKET_HANDSHAKE with the computed accept
// key as body; the handler sees it as the GET it was and calls
// AcceptWebSocket, which answers the raw 101. Each client message then
// arrives as METHOD WEBSOCKET with FLAGS; it is queued on the connection,
// not run as a request. Replies are raw server frames, an empty reply
// closes the TCP connection.

// Message types, as RFC 6455 opcodes (and as gorilla/websocket numbers them).
const (
	TextMessage   = wsframe.OpText
	BinaryMessage = wsframe.OpBinary
)

// Close codes (RFC 6455 section 7.4.1).
const (
	CloseNormal         = wsframe.CloseNormal
	CloseGoingAway      = wsframe.CloseGoingAway
	CloseProtocolError  = wsframe.CloseProtocolError
	CloseInvalidPayload = wsframe.CloseInvalidPayload
	ClosePolicy         = 1008
	CloseMessageTooBig  = wsframe.CloseMessageTooBig
	CloseInternalError  = wsframe.CloseInternalError
)

var (
	errNotHandshake = errors.New("workerkit: AcceptWebSocket: the request is not a WebSocket handshake (or the response was already started)")
	errAccepted     = errors.New("workerkit: AcceptWebSocket called twice")
	// ErrWebSocketClosed is returned by WSConn methods after the
	// connection was closed by this side.
	ErrWebSocketClosed = errors.New("workerkit: websocket closed")
)

// CloseError is what ReadMessage returns once the client closed the
// connection with a close frame.
type CloseError struct {
	Code   int
	Reason string
}

func (e *CloseError) Error() string {
	return fmt.Sprintf("workerkit: websocket closed by the client: %d %s", e.Code, e.Reason)
}

// wsFin is the FIN bit of a frame's first byte: the worker's frames are
// whole messages.
const wsFin = 0x80

// wsCloseWait bounds how long Close waits for the client's answering close
// frame before it ends the connection anyway.
const wsCloseWait = 2 * time.Second

// wsMaxQueued bounds the bytes of client messages queued for a handler
// that does not read; past it the connection is closed with 1008.
const wsMaxQueued = 64 << 20

// WSConn is a WebSocket accepted by AcceptWebSocket. ReadMessage must be
// called from one goroutine at a time; WriteMessage, Ping and Close may be
// called from any goroutine. Pings from the client are answered by
// ReadMessage. The connection ends when the handler returns (with close
// 1000 if it did not close it itself).
type WSConn struct {
	rw  *responseWriter
	key flightKey
	ctx context.Context

	writeMu sync.Mutex
	// closed: this side ended the connection (empty reply sent, or the
	// handler returned); guarded by writeMu.
	closed    bool
	closeSent bool // guarded by writeMu

	mu         sync.Mutex // guards the inbox
	inbox      []wsMessage
	inboxBytes int
	overflow   bool
	wake       chan struct{}
	peerClosed chan struct{} // closed when the client's close arrives after ours
	done       chan struct{} // closed when this side ended the connection
	peerOnce   sync.Once

	groupsMu sync.Mutex
	groups   map[*WSGroup]struct{}

	// seen holds header blocks of this socket's messages already parsed,
	// with their FLAGS, so that the same block is not parsed again;
	// guarded by mu.
	seen     [wsSeenBlocks]seenBlock
	seenNext int // the entry of seen to replace next

	// reader is the reader NextReader returned last, retired (its
	// libzmq memory freed) by the next NextReader or ReadMessage, or when
	// the connection ends; guarded by mu.
	reader *wsReader
	// forgotten: the connection ended; what comes later is freed, not
	// queued (guarded by mu).
	forgotten bool
}

// A front end sends a WebSocket's messages with its handshake's headers
// plus METHOD and FLAGS (Mongrel2 and Caddy alike), so a socket's header
// blocks differ only in FLAGS, and one or two FLAGS values (text or binary,
// whole) make up most messages. Blocks larger than wsSeenMax are not kept:
// the cache holds at most wsSeenBlocks×wsSeenMax bytes per socket.
const (
	wsSeenBlocks = 2
	wsSeenMax    = 4 << 10
)

type seenBlock struct {
	headers []byte
	tns     bool // a tnetstring dict, not JSON
	flags   byte
}

type wsMessage struct {
	flags   byte
	payload []byte
	// kept, when set, is the libzmq message payload lies in (a large
	// one): ReadMessage copies it out, NextReader reads it in place.
	kept *zmqio.Msg
}

// AcceptWebSocket completes a WebSocket handshake the front end passed on:
// it sends the 101 and returns the connection. Call it from the handler of
// a GET whose Upgrade header is "websocket"; check Origin (and anything else)
// first, and refuse with an ordinary response (403...) instead of calling
// it. The handler then reads and writes messages until it returns; the
// worker's handler slot is free meanwhile (as for Group members), and
// r.Context() is cancelled when the client goes away. responseHeader adds
// headers to the 101 (Sec-WebSocket-Protocol, for one). It fails for a
// request that is not a handshake, and for a ResponseWriter that is not
// workerkit's (wrappers must provide Unwrap() http.ResponseWriter).
func AcceptWebSocket(w http.ResponseWriter, r *http.Request, responseHeader http.Header) (*WSConn, error) {
	rw := unwrapResponseWriter(w)
	if rw == nil || rw.fl == nil {
		return nil, fmt.Errorf("workerkit: AcceptWebSocket needs the ResponseWriter workerkit gave the handler: %w", http.ErrNotSupported)
	}
	if rw.ws != nil {
		return nil, errAccepted
	}
	if rw.wsAccept == "" || rw.wroteHeader {
		return nil, errNotHandshake
	}
	s := rw.fe.s
	c := &WSConn{rw: rw, key: rw.fl.key, ctx: rw.ctx, wake: make(chan struct{}, 1),
		peerClosed: make(chan struct{}), done: make(chan struct{})}
	// Registered before the 101 goes out: the client's first message may
	// follow it at once.
	s.mu.Lock()
	if s.websockets == nil {
		s.websockets = make(map[flightKey]*WSConn)
	}
	s.websockets[c.key] = c
	s.wsOpen.Store(int32(len(s.websockets)))
	s.mu.Unlock()
	head := wsframe.SwitchingHead + rw.wsAccept + "\r\n"
	for k, vs := range responseHeader {
		for _, v := range vs {
			head += k + ": " + v + "\r\n"
		}
	}
	rw.ws = c
	rw.wroteHeader, rw.headSent = true, true
	rw.direct = true // its frames too (response.go: push)
	if err := rw.sendRaw([]byte(head + "\r\n")); err != nil {
		s.forgetWebSocket(c)
		return nil, err
	}
	// Like a Group member, an open WebSocket holds no handler slot: it
	// would otherwise take one for its whole life.
	<-s.sem
	rw.slotFreed = true
	return c, nil
}

// IsWebSocketUpgrade reports whether r asks for a WebSocket (the front end
// passed it on as a handshake AcceptWebSocket can complete).
func IsWebSocketUpgrade(r *http.Request) bool {
	rw, ok := r.Context().Value(wsHandshakeKey{}).(*responseWriter)
	return ok && rw.wsAccept != ""
}

type wsHandshakeKey struct{}

// prepareHandshake turns the front end's WEBSOCKET_HANDSHAKE into the GET
// the client sent, and keeps the accept key for AcceptWebSocket.
func prepareHandshake(rw *responseWriter, r *http.Request, acceptKey []byte) *http.Request {
	rw.wsAccept = string(acceptKey)
	r.Method = http.MethodGet
	r.Body, r.ContentLength = http.NoBody, 0
	return r.WithContext(context.WithValue(r.Context(), wsHandshakeKey{}, rw))
}

// wsMaxPiece bounds the bytes of one reply message of a WebSocket: larger
// than an HTTP body's pieces (maxMsgBody), because every reply message
// costs a hand-off, a send and a receive on both sides, and a frame of up
// to this size goes whole, without a copy, from C memory (zmqio.CBuf).
// A full piece and its reply prefix are just over zmqio.CBufLargeMin, so
// it takes the next mapping class (2 MiB of address space, of which only
// the pages written are resident): one message for a 1 MiB frame was
// worth more than the untouched half.
const wsMaxPiece = 1<<20 + 16

// sendRaw sends b as reply bodies, within the reply credit when flow
// control is on, so that a slow client slows the writer.
func (rw *responseWriter) sendRaw(b []byte) error { return rw.sendFrame(nil, b) }

// sendFrame sends head then payload as one stream of reply bodies: the
// bytes go straight into the reply frames (C memory for large ones), with
// no copy of the whole frame assembled first.
func (rw *responseWriter) sendFrame(head, payload []byte) error {
	if rw.err != nil {
		return rw.err
	}
	for len(head)+len(payload) > 0 {
		credit := int64(math.MaxInt64)
		if rw.flow != nil {
			c, err := rw.flow.await(rw.ctx, rw.fe.dead)
			if err != nil {
				rw.err = err
				return err
			}
			credit = c
		}
		n := int(min(int64(len(head)+len(payload)), wsMaxPiece, max(credit, 1)))
		f := getFrame()
		f.b = mongrel2.AppendReplyOne(f.b, rw.sender, rw.connID, nil)
		if n >= cFrameMin {
			f = f.toC(len(f.b) + n)
		}
		h := min(n, len(head))
		f.b = append(f.b, head[:h]...)
		f.b = append(f.b, payload[:n-h]...)
		head, payload = head[h:], payload[n-h:]
		if err := rw.push(f); err != nil {
			rw.err = err
			return err
		}
	}
	return nil
}

// deliverWebSocket queues a client message for its connection. It runs on
// the request socket's owner (or the control connection's), so it never
// blocks.
func (s *server) deliverWebSocket(fe *frontEndConn, req *mongrel2.Request, msg []byte) {
	s.mu.Lock()
	c := s.websockets[flightKey{fe, req.ConnID}]
	s.mu.Unlock()
	if c == nil {
		fe.log.Debug("websocket message for a connection this worker does not hold", "conn", req.ConnID)
		return
	}
	flags := req.Header(mongrel2.HeaderFlags)
	fb, ok := mongrel2.ParseFlags(flags)
	if !ok {
		fe.log.Warn("websocket message with bad FLAGS", "flags", flags, "conn", req.ConnID)
		return
	}
	if p, err := mongrel2.SplitRequest(msg); err == nil {
		c.remember(p.Headers, p.TNetstringHeaders(), fb)
	}
	c.push(wsMessage{flags: fb, payload: req.Body})
}

// deliverSeen delivers msg if it is a message of one of the worker's
// WebSockets whose header block the socket has seen before (deliverWebSocket
// parsed it), without parsing the block again. It reports whether it did;
// if so, kept (the libzmq message msg lies in, or nil) goes with it.
func (s *server) deliverSeen(fe *frontEndConn, msg []byte, kept *zmqio.Msg) bool {
	if s.wsOpen.Load() == 0 {
		return false
	}
	p, err := mongrel2.SplitRequest(msg)
	if err != nil {
		return false
	}
	s.mu.Lock()
	c := s.websockets[flightKey{fe, string(p.ConnID)}]
	s.mu.Unlock()
	if c == nil {
		return false
	}
	fb, ok := c.seenFlags(p.Headers, p.TNetstringHeaders())
	if ok {
		c.push(wsMessage{flags: fb, payload: p.Body, kept: kept})
	}
	return ok
}

// remember keeps a header block deliverWebSocket parsed for this socket.
func (c *WSConn) remember(headers []byte, tns bool, flags byte) {
	if len(headers) > wsSeenMax {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e := &c.seen[c.seenNext]
	e.headers = append(e.headers[:0], headers...)
	e.tns, e.flags = tns, flags
	c.seenNext = (c.seenNext + 1) % wsSeenBlocks
}

// seenFlags returns the FLAGS of a header block the socket has seen.
func (c *WSConn) seenFlags(headers []byte, tns bool) (byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.seen {
		if e.headers != nil && e.tns == tns && bytes.Equal(e.headers, headers) {
			return e.flags, true
		}
	}
	return 0, false
}

// push queues a client message for ReadMessage.
func (c *WSConn) push(m wsMessage) {
	if m.flags&0x0F == wsframe.OpClose && c.closing() {
		m.kept.Close()
		c.peerOnce.Do(func() { close(c.peerClosed) })
		return
	}
	c.mu.Lock()
	if c.forgotten {
		c.mu.Unlock()
		m.kept.Close()
		return
	}
	if c.inboxBytes+len(m.payload) > wsMaxQueued {
		m.kept.Close()
		c.overflow = true
	} else {
		c.inbox = append(c.inbox, m)
		c.inboxBytes += len(m.payload)
	}
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *WSConn) closing() bool {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	return c.closeSent
}

func (s *server) forgetWebSocket(c *WSConn) {
	s.mu.Lock()
	if s.websockets[c.key] == c {
		delete(s.websockets, c.key)
		s.wsOpen.Store(int32(len(s.websockets)))
	}
	s.mu.Unlock()
	// Messages nobody will read, and the last one read: their libzmq
	// memory goes now (Go's collector does not see it).
	c.mu.Lock()
	c.forgotten = true
	for _, m := range c.inbox {
		m.kept.Close()
	}
	c.inbox, c.inboxBytes = nil, 0
	c.mu.Unlock()
	c.retireReader()
}

// next waits for the next queued client message.
func (c *WSConn) next() (wsMessage, error) {
	for {
		c.mu.Lock()
		if len(c.inbox) > 0 {
			m := c.inbox[0]
			c.inbox[0] = wsMessage{}
			c.inbox = c.inbox[1:]
			c.inboxBytes -= len(m.payload)
			c.mu.Unlock()
			return m, nil
		}
		over := c.overflow
		c.mu.Unlock()
		if over {
			_ = c.Close(ClosePolicy, "messages not read")
			return wsMessage{}, ErrWebSocketClosed
		}
		select {
		case <-c.wake:
		case <-c.done:
			return wsMessage{}, ErrWebSocketClosed
		case <-c.ctx.Done():
			return wsMessage{}, fmt.Errorf("workerkit: websocket: %w", errClientGone)
		}
	}
}

// ReadMessage returns the next text or binary message from the client. It
// answers pings itself; when the client closes, it answers the close and
// returns a *CloseError; when the client goes away, an error (r.Context()
// is cancelled then too). p is the caller's to keep (NextReader makes no
// copy).
func (c *WSConn) ReadMessage() (messageType int, p []byte, err error) {
	op, m, err := c.nextData()
	if err != nil {
		return 0, nil, err
	}
	if m.kept != nil {
		p = bytes.Clone(m.payload)
		m.kept.Close()
		return op, p, nil
	}
	return op, m.payload, nil
}

// NextReader returns the next text or binary message from the client as a
// reader, as gorilla/websocket's NextReader does, with pings, the client's
// close and its going away handled as by ReadMessage. The reader is valid
// until the next NextReader or ReadMessage; reading it after that is an
// error. It makes no copy of its own: a large message is read from the
// memory libzmq received it in, so a handler that reads messages into a
// buffer it reuses allocates nothing per message, where ReadMessage
// returns a new slice each time.
func (c *WSConn) NextReader() (messageType int, r io.Reader, err error) {
	op, m, err := c.nextData()
	if err != nil {
		return 0, nil, err
	}
	rd := &wsReader{data: m.payload, kept: m.kept}
	c.mu.Lock()
	c.reader = rd
	c.mu.Unlock()
	return op, rd, nil
}

// nextData waits for the next text or binary message, answering the
// control messages before it, and lets go of what the last NextReader
// reads.
func (c *WSConn) nextData() (int, wsMessage, error) {
	c.retireReader()
	for {
		m, err := c.next()
		if err != nil {
			return 0, m, err
		}
		switch op := int(m.flags & 0x0F); op {
		case wsframe.OpPing:
			_ = c.writeFrame(wsframe.OpPong, m.payload)
			m.kept.Close() // control payloads are small: never kept, in practice
		case wsframe.OpPong:
			m.kept.Close()
		case wsframe.OpClose:
			defer m.kept.Close()
			code, reason, perr := wsframe.ParseClose(m.payload)
			if perr != nil {
				code = CloseProtocolError
			}
			echo := code
			if echo == wsframe.CloseNoStatus {
				echo = 0
			}
			c.closeWith(echo, "", false)
			return 0, wsMessage{}, &CloseError{Code: code, Reason: reason}
		case TextMessage:
			if !utf8.Valid(m.payload) {
				m.kept.Close()
				_ = c.Close(CloseInvalidPayload, "text message is not UTF-8")
				return 0, wsMessage{}, ErrWebSocketClosed
			}
			return op, m, nil
		case BinaryMessage:
			return op, m, nil
		default:
			m.kept.Close()
			_ = c.Close(CloseProtocolError, "unexpected opcode")
			return 0, wsMessage{}, ErrWebSocketClosed
		}
	}
}

// errStaleReader is what a NextReader reader gives once the next message
// was asked for.
var errStaleReader = errors.New("workerkit: websocket: read of a message reader after the next NextReader or ReadMessage")

// wsReader reads one message's payload for NextReader. Its lock is held
// while it copies, so that retiring it (and freeing the libzmq memory it
// reads) waits for a copy another goroutine is making.
type wsReader struct {
	mu    sync.Mutex
	data  []byte
	kept  *zmqio.Msg
	stale bool
}

func (r *wsReader) Read(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stale {
		return 0, errStaleReader
	}
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

// WriteTo lets io.Copy and bytes.Buffer.ReadFrom take the payload in one
// write.
func (r *wsReader) WriteTo(w io.Writer) (int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stale {
		return 0, errStaleReader
	}
	n, err := w.Write(r.data)
	r.data = r.data[n:]
	return int64(n), err
}

func (r *wsReader) retire() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stale = true
	r.data = nil
	r.kept.Close()
}

// retireReader retires the reader NextReader returned last, if any.
func (c *WSConn) retireReader() {
	c.mu.Lock()
	r := c.reader
	c.reader = nil
	c.mu.Unlock()
	if r != nil {
		r.retire()
	}
}

// WriteMessage sends one message (TextMessage or BinaryMessage). It waits
// for reply credit when the front end's control channel is on, so a slow
// client slows the writer down.
func (c *WSConn) WriteMessage(messageType int, data []byte) error {
	if messageType != TextMessage && messageType != BinaryMessage {
		return fmt.Errorf("workerkit: WriteMessage: message type %d", messageType)
	}
	return c.writeFrame(byte(messageType), data)
}

// Ping sends a ping; the client's pong is consumed by ReadMessage.
func (c *WSConn) Ping(data []byte) error {
	if len(data) > 125 {
		return errors.New("workerkit: ping payload over 125 bytes")
	}
	return c.writeFrame(wsframe.OpPing, data)
}

func (c *WSConn) writeFrame(op byte, payload []byte) error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if c.closed || c.closeSent {
		return ErrWebSocketClosed
	}
	var head [10]byte
	return c.rw.sendFrame(wsframe.AppendHeader(head[:0], wsFin|op, len(payload)), payload)
}

// Close sends a close frame with code and reason, waits a moment for the
// client's answer, and ends the connection.
func (c *WSConn) Close(code int, reason string) error {
	return c.closeWith(code, reason, true)
}

// closeWith sends the close frame (none for code 0), waits for the
// client's answer if await, and sends the empty reply that ends the TCP
// connection.
func (c *WSConn) closeWith(code int, reason string, await bool) error {
	c.writeMu.Lock()
	if c.closed || c.closeSent {
		c.writeMu.Unlock()
		return ErrWebSocketClosed
	}
	c.closeSent = true
	var err error
	if code != 0 {
		err = c.rw.sendRaw(wsframe.AppendClose(nil, code, reason))
	}
	c.writeMu.Unlock()
	if err == nil && await {
		timer := time.NewTimer(wsCloseWait)
		select {
		case <-c.peerClosed:
		case <-timer.C:
		case <-c.ctx.Done():
		}
		timer.Stop()
	}
	c.end()
	return err
}

// end sends the empty reply (once) and forgets the connection.
func (c *WSConn) end() {
	c.writeMu.Lock()
	if !c.closed {
		c.closed = true
		if c.rw.err == nil && c.ctx.Err() == nil {
			c.rw.sendClose()
		}
		close(c.done)
	}
	c.writeMu.Unlock()
	c.rw.fe.s.forgetWebSocket(c)
	c.leaveGroups()
}

// finish runs when the handler that accepted c returned: a
// connection it left open is closed (1000, or 1011 after a panic).
func (c *WSConn) finish(ok bool) {
	code := CloseNormal
	if !ok {
		code = CloseInternalError
	}
	if c.closeWith(code, "", true) != nil {
		c.end()
	}
}

// Context is the handshake request's context: cancelled when the client
// goes away.
func (c *WSConn) Context() context.Context { return c.ctx }

// endWebSockets closes every open WebSocket with 1001 at shutdown, so that
// their handlers return and their clients reconnect to a worker that stays.
func (s *server) endWebSockets() {
	s.mu.Lock()
	cs := make([]*WSConn, 0, len(s.websockets))
	for _, c := range s.websockets {
		cs = append(cs, c)
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.closeWith(CloseGoingAway, "worker shutting down", true)
		}()
	}
	wg.Wait()
	if len(cs) > 0 {
		s.log.Info("closed websockets at shutdown", "count", len(cs))
	}
}
