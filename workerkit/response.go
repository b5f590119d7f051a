package workerkit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/zmqio"
)

const (
	// bufSize is what a handler may write before the response head must go
	// out: below it the whole response is one message with a Content-Length,
	// which is the cheapest thing for both the worker and the front end.
	bufSize = 64 << 10
	// maxMsgBody bounds the body bytes in one reply message. ZeroMQ's HWM
	// counts messages, not bytes, and every hop copies a message whole, so
	// a large body must travel as several bounded messages.
	maxMsgBody = 256 << 10
	// maxPooledFrame keeps pathological heads (huge headers) out of the pool.
	maxPooledFrame = 2 * maxMsgBody
	// sniffLen is what http.DetectContentType looks at.
	sniffLen = 512
	// chunkOverhead bounds the framing of one chunk of at most maxMsgBody
	// bytes ("40000\r\n" ... "\r\n") plus the last chunk ("0\r\n\r\n").
	chunkOverhead = 8 + 2 + 2 + 5
)

var (
	errClientGone    = errors.New("workerkit: client went away")
	errWorkerStopped = errors.New("workerkit: worker stopped")
	errJoined        = errors.New("workerkit: the response has joined a Group; the Group writes it now")
)

// frame is one reply message on its way to the reply socket's owner. Frames
// are pooled: every reply needs one and most are about the same size.
type frame struct {
	b []byte
	// c, when set, is the C memory b lies in (a frame with a large body):
	// libzmq sends it without a copy. Such frames are not pooled.
	c *zmqio.CBuf
	// queued, when set, counts the frames of a WebSocket response in the
	// reply socket owner's queue, and queuedMany those of each socket a
	// broadcast frame goes to; putFrame, after the send, counts this one
	// out.
	queued     *atomic.Int32
	queuedMany []*atomic.Int32
}

var framePool = sync.Pool{New: func() any { return &frame{b: make([]byte, 0, 1024)} }}

func getFrame() *frame { return framePool.Get().(*frame) }

// putFrame recycles a frame, or frees the C memory of one that was not sent.
func putFrame(f *frame) {
	if f.queued != nil {
		f.queued.Add(-1)
		f.queued = nil
	}
	for _, q := range f.queuedMany {
		q.Add(-1)
	}
	f.queuedMany = nil
	if f.c != nil {
		f.c.Free()
		return
	}
	if cap(f.b) > maxPooledFrame {
		return
	}
	f.b = f.b[:0]
	framePool.Put(f)
}

// cFrameMin is the body size from which a frame is built in C memory: one
// copy (the handler's bytes into it) instead of two (into a Go frame, then
// into libzmq's message).
const cFrameMin = 64 << 10

// toC moves f's bytes so far into C memory with room for need bytes in
// all, and recycles f.
func (f *frame) toC(need int) *frame {
	c := zmqio.NewCBuf(need)
	n := copy(c.Bytes(), f.b)
	cf := &frame{b: c.Bytes()[:n], c: c}
	putFrame(f)
	return cf
}

// inC returns the C memory to send f from, or nil to send f.b (a Go frame,
// or one whose appends outgrew its C memory, which cannot happen when toC
// was given the right size, but must not be sent from freed memory).
func (f *frame) inC() *zmqio.CBuf {
	if f.c == nil || len(f.b) == 0 || unsafe.SliceData(f.b) != unsafe.SliceData(f.c.Bytes()) {
		return nil
	}
	return f.c
}

// responseWriter renders a handler's response as the raw HTTP/1.1 stream the
// Mongrel2 protocol carries, cut into reply messages. It is used by exactly
// one handler goroutine and recycled afterwards.
type responseWriter struct {
	fe     *frontEndConn
	ctx    context.Context
	sender string
	connID string
	fl     *flight // nil for responses the handler never saw
	flow   *flow   // reply credit, nil without flow control
	prefix int     // bytes of a reply frame before its body

	header http.Header
	status int
	cl     int64 // declared Content-Length, -1 if none
	// written counts body bytes the handler wrote (including discarded HEAD
	// bodies, which decide the Content-Length of a HEAD response).
	written int64
	buf     []byte
	keys    []string
	sniffed [1]string // backs a sniffed Content-Type header
	err     error     // sticky: once a send failed, the stream is broken

	wroteHeader bool
	headSent    bool
	chunked     bool
	closeAfter  bool
	isHEAD      bool
	http10      bool
	joined      bool // a Group took the response over
	// direct: the response's frames go out from the handler's goroutine
	// when the reply socket is free (inline.go); once one went to the
	// socket's owner, the rest follow it there, in order. A WebSocket's
	// frames go direct again once the owner has sent those it was given
	// (wsQueued): a socket lives long, and the owner is busy now and then.
	direct   bool
	wsQueued atomic.Int32
	// WebSocket handshake (websocket.go): the accept key the front end
	// computed, the accepted connection, and whether its handler slot
	// was given back.
	wsAccept  string
	ws        *WSConn
	slotFreed bool
}

var rwPool = sync.Pool{New: func() any {
	return &responseWriter{header: make(http.Header), buf: make([]byte, 0, 4096)}
}}

func getResponseWriter(fe *frontEndConn, ctx context.Context, sender, connID, method string, major, minor int) *responseWriter {
	rw := rwPool.Get().(*responseWriter)
	rw.fe, rw.ctx, rw.sender, rw.connID = fe, ctx, sender, connID
	rw.prefix = replyPrefixLen(sender, connID)
	rw.status, rw.cl, rw.written = 0, -1, 0
	rw.isHEAD = method == http.MethodHead
	rw.http10 = major < 1 || (major == 1 && minor == 0)
	return rw
}

func (rw *responseWriter) release() {
	clear(rw.header)
	clear(rw.keys)
	rw.keys = rw.keys[:0]
	rw.buf = rw.buf[:0]
	rw.fe, rw.ctx, rw.err, rw.fl, rw.flow = nil, nil, nil, nil, nil
	rw.wroteHeader, rw.headSent, rw.chunked, rw.closeAfter, rw.direct = false, false, false, false, false
	rw.wsAccept, rw.ws, rw.slotFreed = "", nil, false
	if rw.wsQueued.Load() != 0 {
		return // frames in the owner's queue still count themselves out here
	}
	rwPool.Put(rw)
}

// Header implements http.ResponseWriter.
func (rw *responseWriter) Header() http.Header { return rw.header }

// WriteHeader implements http.ResponseWriter with net/http's rules, so that
// handlers behave here as they do behind net/http.
func (rw *responseWriter) WriteHeader(code int) {
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if rw.wroteHeader {
		rw.fe.log.Warn("superfluous WriteHeader call", "status", code, "conn", rw.connID)
		return
	}
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		// Informational responses go out at once and do not end the head.
		if rw.err == nil && rw.ctx.Err() == nil {
			f := getFrame()
			f.b = mongrel2.AppendReplyOne(f.b, rw.sender, rw.connID, nil)
			f.b = appendStatusLine(f.b, code)
			f.b = rw.appendHeaders(f.b)
			f.b = append(f.b, '\r', '\n')
			if err := rw.push(f); err != nil {
				rw.err = err
			}
		}
		return
	}
	rw.wroteHeader = true
	rw.status = code
	if v := rw.header["Content-Length"]; len(v) > 0 {
		n, err := strconv.ParseInt(strings.TrimSpace(v[0]), 10, 64)
		if err == nil && n >= 0 {
			rw.cl = n
		} else {
			rw.fe.log.Warn("invalid Content-Length set by handler; ignoring it", "value", v[0], "conn", rw.connID)
			delete(rw.header, "Content-Length")
		}
	}
}

func (rw *responseWriter) bodyAllowed() bool { return bodyAllowedForStatus(rw.status) }

func bodyAllowedForStatus(code int) bool {
	switch {
	case code >= 100 && code <= 199:
		return false
	case code == http.StatusNoContent, code == http.StatusNotModified:
		return false
	}
	return true
}

// Write implements http.ResponseWriter.
func (rw *responseWriter) Write(p []byte) (int, error) { return write(rw, p) }

// WriteString avoids the []byte conversion io.WriteString would make.
func (rw *responseWriter) WriteString(s string) (int, error) { return write(rw, s) }

func write[T string | []byte](rw *responseWriter, p T) (int, error) {
	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	if len(p) == 0 {
		return 0, rw.err
	}
	if !rw.bodyAllowed() {
		return 0, http.ErrBodyNotAllowed
	}
	if rw.err != nil {
		return 0, rw.err
	}
	if rw.cl >= 0 && rw.written+int64(len(p)) > rw.cl {
		return 0, http.ErrContentLength
	}
	rw.written += int64(len(p))
	if rw.isHEAD {
		// The body is discarded, but its start decides the Content-Type and
		// its length the Content-Length, as net/http does.
		if !rw.headSent && len(rw.buf) < sniffLen {
			n := min(len(p), sniffLen-len(rw.buf))
			rw.buf = append(rw.buf, p[:n]...)
		}
		return len(p), nil
	}
	if len(rw.buf)+len(p) <= bufSize {
		rw.buf = append(rw.buf, p...)
		return len(p), nil
	}
	var err error
	switch b := any(p).(type) {
	case []byte:
		err = rw.emit(rw.buf, b, false)
	case string:
		err = rw.emit(rw.buf, []byte(b), false)
	}
	rw.buf = rw.buf[:0]
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush implements http.Flusher: streaming handlers (server-sent events, long
// polls, progress output) need their bytes at the client now.
func (rw *responseWriter) Flush() { _ = rw.FlushError() }

// FlushError is what http.ResponseController calls; unlike Flush it lets the
// handler learn that the client is gone.
func (rw *responseWriter) FlushError() error {
	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	if rw.err != nil {
		return rw.err
	}
	var body []byte
	if !rw.isHEAD && rw.bodyAllowed() {
		body = rw.buf
	}
	err := rw.emit(body, nil, false)
	if !rw.isHEAD {
		rw.buf = rw.buf[:0]
	}
	return err
}

// finish completes the response after the handler returned normally.
func (rw *responseWriter) finish() {
	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	if rw.err != nil {
		return
	}
	bodyOK := !rw.isHEAD && rw.bodyAllowed()
	var body []byte
	if bodyOK {
		body = rw.buf
	}
	if err := rw.emit(body, nil, true); err != nil {
		return
	}
	if rw.closeAfter || (bodyOK && rw.cl >= 0 && rw.written < rw.cl) {
		// The client cannot tell where the body ends (or was promised more
		// than it got): only closing the connection tells it.
		rw.sendClose()
	}
}

// fail ends a response whose handler panicked.
func (rw *responseWriter) fail(abort bool) {
	if rw.err != nil {
		return
	}
	if abort || rw.headSent {
		rw.sendClose()
		return
	}
	clear(rw.header)
	rw.header.Set("Content-Type", "text/plain; charset=utf-8")
	rw.header.Set("X-Content-Type-Options", "nosniff")
	rw.status, rw.cl, rw.wroteHeader = http.StatusInternalServerError, -1, true
	rw.buf = append(rw.buf[:0], "Internal Server Error\n"...)
	rw.written = int64(len(rw.buf))
	var body []byte
	if !rw.isHEAD {
		body = rw.buf
	}
	_ = rw.emit(body, nil, true)
}

// errorResponse answers a request the handler never saw.
func (rw *responseWriter) errorResponse(code int, msg string) {
	rw.header.Set("Content-Type", "text/plain; charset=utf-8")
	rw.header.Set("X-Content-Type-Options", "nosniff")
	rw.WriteHeader(code)
	_, _ = rw.WriteString(msg)
	rw.finish()
}

// sendClose sends an empty reply, which makes the front end close the
// client connection.
func (rw *responseWriter) sendClose() {
	f := getFrame()
	f.b = mongrel2.AppendReplyOne(f.b, rw.sender, rw.connID, nil)
	if err := rw.push(f); err != nil {
		rw.err = err
	}
}

// emit sends the head (if not yet sent) and the bytes of a then b, cut into
// messages of at most maxMsgBody body bytes. final marks the end of the
// response: only then can a fully buffered response carry a Content-Length.
func (rw *responseWriter) emit(a, b []byte, final bool) error {
	if rw.err != nil {
		return rw.err
	}
	if rw.headSent && len(a)+len(b) == 0 && !(final && rw.chunked) {
		// Nothing to say; an empty reply would close the connection.
		return nil
	}
	for {
		// With flow control, wait for some credit and then send what fits
		// (see flow): a frame cut to the credit never waits for more.
		credit := int64(math.MaxInt64)
		if rw.flow != nil && len(a)+len(b) > 0 {
			c, err := rw.flow.await(rw.ctx, rw.fe.dead)
			if err != nil {
				rw.err = err
				return err
			}
			credit = c
		}
		f := getFrame()
		f.b = mongrel2.AppendReplyOne(f.b, rw.sender, rw.connID, nil)
		if !rw.headSent {
			f.b = rw.appendHead(f.b, a, b, final)
			rw.headSent = true
		}
		n := min(len(a)+len(b), maxMsgBody)
		if room := credit - int64(len(f.b)-rw.prefix) - chunkOverhead; int64(n) > room {
			switch {
			case room > 0:
				n = int(room)
			case len(f.b) > rw.prefix:
				// A large head on a small window leaves no room: this
				// frame is the head alone (take lets it exceed the credit).
				n = 0
			default:
				// A window too small for the chunk framing (nonsense, but
				// it must not loop): take waits for the whole window.
				n = int(min(int64(n), rw.flow.window))
			}
		}
		if n >= cFrameMin {
			// chunkOverhead covers the chunk's framing and the last chunk.
			f = f.toC(len(f.b) + n + chunkOverhead)
		}
		if n > 0 {
			if rw.chunked {
				f.b = strconv.AppendUint(f.b, uint64(n), 16)
				f.b = append(f.b, '\r', '\n')
			}
			k := min(n, len(a))
			f.b = append(f.b, a[:k]...)
			a = a[k:]
			f.b = append(f.b, b[:n-k]...)
			b = b[n-k:]
			if rw.chunked {
				f.b = append(f.b, '\r', '\n')
			}
		}
		last := len(a)+len(b) == 0
		if last && final && rw.chunked {
			f.b = append(f.b, "0\r\n\r\n"...)
		}
		if err := rw.push(f); err != nil {
			rw.err = err
			return err
		}
		if last {
			return nil
		}
	}
}

// replyPrefixLen is the length of "SENDER LEN:ID, ", what
// mongrel2.AppendReplyOne writes before the body.
func replyPrefixLen(sender, connID string) int {
	n := len(connID)
	digits := 1
	for ; n >= 10; n /= 10 {
		digits++
	}
	return len(sender) + 1 + digits + 1 + len(connID) + 1 + 1
}

// push hands a frame to the reply socket's owner, or, for a request running
// inline, sends it itself when the socket is free (sendDirect). It blocks
// while that owner is behind, which is what paces a streaming handler, and,
// with flow control, until the front end has granted credit for the frame's
// body.
func (rw *responseWriter) push(f *frame) error {
	if rw.ctx.Err() != nil {
		putFrame(f)
		return errClientGone
	}
	if rw.flow != nil {
		if err := rw.flow.take(rw.ctx, rw.fe.dead, int64(len(f.b)-rw.prefix)); err != nil {
			putFrame(f)
			return err
		}
	}
	if rw.direct && (rw.ws == nil || rw.wsQueued.Load() == 0) {
		if rw.fe.sendDirect(f) {
			return nil
		}
		if rw.ws == nil {
			rw.direct = false
		}
	}
	if rw.ws != nil {
		f.queued = &rw.wsQueued
		rw.wsQueued.Add(1)
	}
	// Most of the time the reply socket's owner keeps up: hand the frame
	// over without waiting, which spares the request context its Done
	// channel (allocated on first use).
	select {
	case rw.fe.out <- f:
		return nil
	default:
	}
	select {
	case rw.fe.out <- f:
		return nil
	case <-rw.fe.dead:
		putFrame(f)
		return errWorkerStopped
	case <-rw.ctx.Done():
		putFrame(f)
		return errClientGone
	}
}

// appendHead writes status line and headers, deciding how the body is framed.
// a and b are the first body bytes about to be sent (for sniffing).
func (rw *responseWriter) appendHead(dst, a, b []byte, final bool) []byte {
	h := rw.header
	code := rw.status
	bodyOK := rw.bodyAllowed()
	if bodyOK && rw.written > 0 {
		if _, ok := h["Content-Type"]; !ok {
			data := a
			if len(data) == 0 {
				data = b
			}
			if rw.isHEAD {
				data = rw.buf
			}
			if len(data) > 0 {
				// The writer's own backing array: no allocation.
				rw.sniffed[0] = http.DetectContentType(data[:min(len(data), sniffLen)])
				h["Content-Type"] = rw.sniffed[:]
			}
		}
	}
	dst = appendStatusLine(dst, code)
	dst = rw.appendHeaders(dst)
	if _, ok := h["Date"]; !ok {
		dst = appendDate(dst)
	}
	switch {
	case code == http.StatusNoContent || (code >= 100 && code <= 199):
		// never a body, never a length
	case code == http.StatusNotModified:
		if rw.cl >= 0 {
			dst = appendContentLength(dst, rw.cl)
		}
	case rw.isHEAD:
		if rw.cl >= 0 {
			dst = appendContentLength(dst, rw.cl)
		} else if final && rw.written > 0 {
			dst = appendContentLength(dst, rw.written)
		}
	case rw.cl >= 0:
		dst = appendContentLength(dst, rw.cl)
	case final:
		dst = appendContentLength(dst, rw.written)
	case rw.http10:
		// HTTP/1.0 clients do not know chunked encoding: the end of the
		// body is the end of the connection.
		rw.closeAfter = true
		if _, ok := h["Connection"]; !ok {
			dst = append(dst, "Connection: close\r\n"...)
		}
	default:
		rw.chunked = true
		dst = append(dst, "Transfer-Encoding: chunked\r\n"...)
	}
	return append(dst, '\r', '\n')
}

// dateLine caches the Date header line of the current second: formatting
// it is a good part of rendering a small response.
type dateLine struct {
	sec  int64
	line []byte // "Date: ...\r\n", never modified once published
}

var lastDate atomic.Pointer[dateLine]

func appendDate(dst []byte) []byte {
	now := time.Now()
	sec := now.Unix()
	d := lastDate.Load()
	if d == nil || d.sec != sec {
		b := make([]byte, 0, len("Date: ")+len(http.TimeFormat)+2)
		b = append(b, "Date: "...)
		b = now.UTC().AppendFormat(b, http.TimeFormat)
		b = append(b, '\r', '\n')
		d = &dateLine{sec: sec, line: b}
		lastDate.Store(d)
	}
	return append(dst, d.line...)
}

func appendContentLength(dst []byte, n int64) []byte {
	dst = append(dst, "Content-Length: "...)
	dst = strconv.AppendInt(dst, n, 10)
	return append(dst, '\r', '\n')
}

func appendStatusLine(dst []byte, code int) []byte {
	dst = append(dst, "HTTP/1.1 "...)
	dst = strconv.AppendInt(dst, int64(code), 10)
	dst = append(dst, ' ')
	if text := http.StatusText(code); text != "" {
		dst = append(dst, text...)
	} else {
		dst = append(dst, "status code "...)
		dst = strconv.AppendInt(dst, int64(code), 10)
	}
	return append(dst, '\r', '\n')
}

// appendHeaders writes the handler's headers, sorted (deterministic output
// is easier to debug and to test), canonical, and sanitised like net/http:
// invalid names are dropped, CR/LF in values become spaces. Framing headers
// are the writer's business, not the handler's.
func (rw *responseWriter) appendHeaders(dst []byte) []byte {
	keys := rw.keys[:0]
	for k := range rw.header {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		ck := http.CanonicalHeaderKey(k)
		if ck == "Content-Length" || ck == "Transfer-Encoding" || !isToken(ck) {
			continue
		}
		for _, v := range rw.header[k] {
			dst = append(dst, ck...)
			dst = append(dst, ':', ' ')
			v = strings.Trim(v, " \t")
			if strings.ContainsAny(v, "\r\n") {
				for i := 0; i < len(v); i++ {
					c := v[i]
					if c == '\r' || c == '\n' {
						c = ' '
					}
					dst = append(dst, c)
				}
			} else {
				dst = append(dst, v...)
			}
			dst = append(dst, '\r', '\n')
		}
	}
	rw.keys = keys
	return dst
}

// logPanic reports a handler panic with its stack, the way net/http does.
func logPanic(log *slog.Logger, p any, stack []byte, connID string) {
	log.Error("panic serving request", "conn", connID, "panic", fmt.Sprint(p), "stack", string(stack))
}
