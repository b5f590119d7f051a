package workerkit

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"

	"github.com/zmqbridge/caddy-zmq/internal/zmqio"
)

// Streamed uploads (zmqx/1): a request whose body the front end streams
// carries the trusted header ZMQX_BODY: stream and an empty inline body.
// Once the worker has acknowledged it, the front end sends the body over
// the control channel, BODY <conn_id> <bytes> messages and then BODYEND
// <conn_id> (or BODYERR <conn_id>), never more than its credit: the window
// (ZMQX_WINDOW) plus what the worker granted with UCREDIT <conn_id> <bytes>
// as the handler read. So the worker buffers at most a window per upload,
// and a slow handler slows the client down.

var (
	errUploadFailed = errors.New("workerkit: the request body failed at the front end (the client's upload broke, or exceeded the front end's limit)")
	// errUploadUnavailable: the front end streams the body only to a worker
	// that acknowledged the request, which needs a control connection.
	errUploadUnavailable = errors.New("workerkit: streamed request body unavailable: it comes over the control channel only for a request acknowledged there, and this one was not")
	errUploadLost        = errors.New("workerkit: the control connection broke during a streamed request body")
	errUploadOverrun     = errors.New("workerkit: the front end sent more of the request body than the window allows")
)

// Test hooks, set before a worker starts and reset after it stopped.
var (
	// testHookUploadDelivered: a BODY message was buffered; buffered is
	// what the upload holds now.
	testHookUploadDelivered func(connID string, buffered int64)
	// testHookUploadDropped: a BODY message found no open upload.
	testHookUploadDropped func(connID string)
	// testHookUploadGrant: UCREDIT <connID> <n> is queued.
	testHookUploadGrant func(connID string, n int64)
	// testHookUploadClosed: the request is over, its upload closed.
	testHookUploadClosed func(connID string)
)

// upload is the body of one streamed request: BODY messages, in order,
// until the handler reads them. The control channel's owner delivers (and
// never waits); the handler's goroutine reads (and waits for data).
type upload struct {
	ctl    *ctlConn
	connID string
	ctx    context.Context // the request's: cancelled by DISCONNECT, the end of the request, hard shutdown
	window int64
	batch  int64 // grant credit in batches of this (a quarter window)
	length int64 // content-length, -1 if unknown

	mu       sync.Mutex
	chunks   []bodyChunk // delivered, not yet read; chunks[0].data[off:] is next
	off      int
	buffered int64 // bytes in chunks, never more than window
	received int64 // bytes delivered in all
	owed     int64 // bytes read and not yet granted back
	end      error // io.EOF after BODYEND, or why the body failed; nil while it flows
	closed   bool  // the handler is done with it: drop everything
	wake     chan struct{}
}

func newUpload(ctl *ctlConn, connID string, ctx context.Context, window, length int64) *upload {
	return &upload{
		ctl: ctl, connID: connID, ctx: ctx, window: window, length: length,
		batch: max(1, window/4), wake: make(chan struct{}, 1),
	}
}

func (u *upload) signal() {
	select {
	case u.wake <- struct{}{}:
	default:
	}
}

// open reports whether the upload still takes BODY messages.
func (u *upload) open() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return !u.closed && u.end == nil
}

// deliver buffers one BODY message's bytes (c is the caller's to give: it is
// kept, not copied, and released once read or dropped). Called by the
// control channel's owner.
func (u *upload) deliver(c bodyChunk) {
	p := c.data
	u.mu.Lock()
	if u.closed || u.end != nil {
		u.mu.Unlock()
		c.release()
		if testHookUploadDropped != nil {
			testHookUploadDropped(u.connID)
		}
		return
	}
	if u.buffered+int64(len(p)) > u.window {
		// The front end ignored our credit: refuse to buffer beyond the
		// window, which is the whole point of it.
		u.failLocked(errUploadOverrun)
		u.mu.Unlock()
		c.release()
		u.ctl.fe.log.Warn("streamed request body: the front end sent beyond the window; failing the body",
			"conn", u.connID, "window", u.window)
		return
	}
	if len(p) > 0 {
		u.chunks = append(u.chunks, c)
		u.buffered += int64(len(p))
		u.received += int64(len(p))
	} else {
		c.release()
	}
	buffered := u.buffered
	u.mu.Unlock()
	u.signal()
	if testHookUploadDelivered != nil {
		testHookUploadDelivered(u.connID, buffered)
	}
}

// finish ends the body: io.EOF (BODYEND) once what is buffered is read, or
// an error. The first end counts.
func (u *upload) finish(err error) {
	u.mu.Lock()
	if u.end == nil && !u.closed {
		if err == io.EOF && u.length >= 0 && u.received != u.length {
			// Declared and delivered lengths differ: the body was cut
			// short (or overlong), as net/http would report.
			err = io.ErrUnexpectedEOF
		}
		u.end = err
	}
	u.mu.Unlock()
	u.signal()
}

// failLocked ends the body with err at once, dropping what is buffered.
func (u *upload) failLocked(err error) {
	u.end = err
	u.dropLocked()
	u.signal()
}

// dropLocked releases everything buffered.
func (u *upload) dropLocked() {
	for _, c := range u.chunks {
		c.release()
	}
	clear(u.chunks)
	u.chunks, u.off, u.buffered = nil, 0, 0
}

// waitLocked waits, with u.mu held (and released while waiting), until
// some of the body is buffered (nil) or it is over (why). With block false
// (a zero-length Read) it does not wait: nil then may mean nothing is
// buffered.
func (u *upload) waitLocked(block bool) error {
	for {
		if u.closed {
			return http.ErrBodyReadAfterClose
		}
		if u.ctx.Err() != nil {
			return errClientGone
		}
		if u.buffered > 0 {
			return nil
		}
		if u.end != nil {
			return u.end
		}
		if !block {
			return nil
		}
		// Everything delivered has been read. A front end that has used
		// up its credit sends nothing more until it hears from us, so
		// grant what is owed now rather than at the next batch.
		u.grantLocked()
		u.mu.Unlock()
		select {
		case <-u.wake:
		case <-u.ctx.Done():
		}
		u.mu.Lock()
	}
}

// consumedLocked counts n bytes taken by the handler, and grants credit for
// them in batches.
func (u *upload) consumedLocked(n int) {
	u.buffered -= int64(n)
	u.owed += int64(n)
	if u.owed >= u.batch {
		u.grantLocked()
	}
}

// Read implements io.Reader for the handler. It blocks until some of the
// body is there, and grants credit as the handler consumes it.
func (u *upload) Read(p []byte) (int, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if err := u.waitLocked(len(p) > 0); err != nil {
		return 0, err
	}
	n := 0
	for n < len(p) && len(u.chunks) > 0 {
		c := u.chunks[0].data[u.off:]
		k := copy(p[n:], c)
		n += k
		if k == len(c) {
			u.chunks[0].release()
			u.chunks[0] = bodyChunk{}
			u.chunks = u.chunks[1:]
			u.off = 0
		} else {
			u.off += k
		}
	}
	if len(u.chunks) == 0 {
		u.chunks = nil // let the backing array go too
	}
	u.consumedLocked(n)
	return n, nil
}

// WriteTo implements io.WriterTo, which io.Copy prefers: each BODY message
// goes to w as it came, without the copy into a Read buffer. A chunk being
// written is out of the window already, so the worker holds at most the
// window plus one message.
func (u *upload) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		u.mu.Lock()
		if err := u.waitLocked(true); err != nil {
			u.mu.Unlock()
			if err == io.EOF {
				return total, nil
			}
			return total, err
		}
		c := u.chunks[0]
		data := c.data[u.off:]
		u.chunks[0] = bodyChunk{}
		u.chunks = u.chunks[1:]
		if len(u.chunks) == 0 {
			u.chunks = nil
		}
		u.off = 0
		u.consumedLocked(len(data))
		u.mu.Unlock()
		n, err := w.Write(data)
		c.release()
		total += int64(n)
		if err == nil && n < len(data) {
			err = io.ErrShortWrite
		}
		if err != nil {
			return total, err
		}
	}
}

// grantLocked queues UCREDIT for what the handler has read and not been
// granted yet.
func (u *upload) grantLocked() {
	if u.owed == 0 || u.end != nil {
		return
	}
	n := u.owed
	u.owed = 0
	if testHookUploadGrant != nil {
		testHookUploadGrant(u.connID, n)
	}
	u.ctl.grantUpload(u.connID, n)
}

// Close implements io.Closer: the handler is done with the body (net/http
// semantics: further reads fail). What is buffered is dropped, and BODY
// messages that still come are discarded.
func (u *upload) Close() error {
	u.mu.Lock()
	if !u.closed {
		u.closed = true
		u.dropLocked()
	}
	u.mu.Unlock()
	u.signal()
	return nil
}

// failedBody is the body of a streamed request that cannot be received.
type failedBody struct{ err error }

func (b failedBody) Read([]byte) (int, error) { return 0, b.err }
func (failedBody) Close() error               { return nil }

// uploadFor returns the open upload of a connection: the oldest of its
// requests whose body is still streaming (with keep-alive a connection may
// have several requests, but only one body can stream at a time).
func (s *server) uploadFor(k flightKey) *upload {
	s.mu.Lock()
	defer s.mu.Unlock()
	var u *upload
	for f := s.inflight[k]; f != nil; f = f.next { // newest first
		if f.upload != nil && f.upload.open() {
			u = f.upload
		}
	}
	return u
}

// deliverBody hands the bytes of a BODY message to their upload, or drops
// them (the request is over, or unknown).
func (s *server) deliverBody(k flightKey, c bodyChunk) {
	if u := s.uploadFor(k); u != nil {
		u.deliver(c)
		return
	}
	c.release()
	if testHookUploadDropped != nil {
		testHookUploadDropped(k.connID)
	}
	k.fe.log.Debug("dropping BODY for a request that is not receiving a body", "conn", k.connID, "bytes", len(c.data))
}

// endBody acts on BODYEND (err io.EOF) or BODYERR.
func (s *server) endBody(k flightKey, err error) {
	if u := s.uploadFor(k); u != nil {
		u.finish(err)
	}
}

// failUploads ends every streaming body of fe with err: its control
// connection is gone, and with it BODY messages in flight.
func (s *server) failUploads(fe *frontEndConn, err error) {
	var us []*upload
	s.flightsOf(fe, func(f *flight) {
		if f.upload != nil {
			us = append(us, f.upload)
		}
	})
	for _, u := range us {
		u.finish(err)
	}
}

// bodyChunk is the bytes of one BODY message, inside the buffer the
// control channel received the message into: buf, a ctlBufs buffer
// returned to the pool once the bytes are read or dropped, or kept, the
// message in libzmq's memory (a big chunk, not copied), freed then.
// Whoever uses data must hold the chunk.
type bodyChunk struct {
	data []byte
	buf  *[]byte
	kept *zmqio.Msg
}

func (c bodyChunk) release() {
	if c.buf != nil {
		ctlBufs.Put(c.buf)
	}
	if c.kept != nil {
		c.kept.Close()
	}
}

// ctlBufSize is the control channel's receive buffer: messages up to
// ctlKeepMin are copied into it; bigger ones are kept in libzmq's memory.
const ctlBufSize = ctlKeepMin

// ctlBufs holds the control channel's receive buffers. BODY chunks keep
// theirs until the handler has read them; everything else returns at once.
var ctlBufs = sync.Pool{New: func() any {
	b := make([]byte, ctlBufSize)
	return &b
}}
