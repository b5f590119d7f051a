package caddyzmq

import (
	"errors"
	"net/http"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

// Streamed uploads (zmqx/1): when every worker of the pool speaks the
// control channel, a large body (or one of unknown length) is not buffered.
// The request goes out with `ZMQX_BODY: stream` and an empty inline body;
// once a worker acknowledges it, Caddy sends the body to exactly that
// worker over the control channel as `BODY <id> <bytes>` messages of at
// most streamChunk bytes, then `BODYEND <id>` (or `BODYERR <id>` if the
// client's body broke). The worker grants `UCREDIT <id> <n>` as its
// handler reads; Caddy never has more than the window outstanding, so a
// slow handler slows the client and neither side buffers the whole body.

const (
	// streamThreshold is the largest body still sent inline.
	streamThreshold = 64 << 10
	// streamChunk is the largest BODY message. Each message costs a hand-off
	// to the control socket's owner, libzmq's signal to its I/O thread and
	// the worker's receive and grant, so fewer, bigger ones are cheaper, up
	// to a point (docs/performance.md). It stays below libzmq's receive
	// buffers' mmap threshold (1 MiB, zmqio.NewContext) in the worker, and
	// in one CBuf block.
	streamChunk = 512 << 10
)

// uploadFlow is the credit state of one streamed upload.
type uploadFlow struct {
	mu     sync.Mutex
	credit int64
	signal chan struct{}
	// lost: a chunk could not be handed to the worker (deliverUpload).
	lost atomic.Bool
}

var errUploadLost = errors.New("a chunk of the streamed upload could not be handed to the worker")

// sendUpload queues a message of ex's streamed upload for worker. Unlike
// other control messages it is never dropped for a full queue: the pump
// waits (credit already bounds what it has in flight) until the message is
// queued or the exchange is over (done).
func (t *transport) sendUpload(ex *exchange, worker string, m ctlMsg, done <-chan struct{}) {
	m.worker, m.upload = worker, ex
	select {
	case t.control.in <- m:
		return
	default:
	}
	select {
	case t.control.in <- m:
	case <-done:
		m.release()
	}
}

func newUploadFlow(window int64) *uploadFlow {
	return &uploadFlow{credit: window, signal: make(chan struct{}, 1)}
}

func (u *uploadFlow) grant(n int64) {
	u.mu.Lock()
	u.credit += n
	u.mu.Unlock()
	select {
	case u.signal <- struct{}{}:
	default:
	}
}

// take waits until some credit is there and takes up to want of it.
func (u *uploadFlow) take(want int64, done <-chan struct{}) (int64, bool) {
	for {
		u.mu.Lock()
		if u.credit > 0 {
			n := min(want, u.credit)
			u.credit -= n
			u.mu.Unlock()
			return n, true
		}
		u.mu.Unlock()
		select {
		case <-u.signal:
		case <-done:
			return 0, false
		}
	}
}

// streamsUpload reports whether r's body is streamed to the worker.
func (h *Handler) streamsUpload(r *http.Request, t *transport) bool {
	if t.control == nil || r.Body == nil || r.Body == http.NoBody {
		return false
	}
	if r.ContentLength >= 0 && r.ContentLength <= streamThreshold {
		return false
	}
	return t.control.coversPeers()
}

// pumpUpload sends r's body to the worker that acknowledges ex, paced by
// its credit (uploadPump). It runs in its own goroutine and ends when the
// body is sent, the exchange is over (done), or the worker cannot be
// reached; it never returns while a Read of r's body is under way, and
// it does not wait for a stalled client once done is closed (w serves to
// interrupt that Read).
func (h *Handler) pumpUpload(w http.ResponseWriter, r *http.Request, t *transport, ex *exchange, done <-chan struct{}, consumed *bool) {
	// Wait for the acknowledgement: it names the worker.
	var worker string
	for worker == "" {
		select {
		case <-ex.acked:
			worker = ex.workerID()
		case <-done:
			return
		}
	}
	*consumed = true // from here on the body cannot be sent again
	send := func(m ctlMsg) { t.sendUpload(ex, worker, m, done) }
	p := newUploadPump(r.Body, ex.upload, ex.id, send, done)
	p.max = h.MaxRequestBody
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		h.endUpload(ex, send, p.run())
	}()
	p.watch(readerDone, func() { interruptRead(w, r) })
}

// endUpload settles a streamed upload that stopped short of BODYEND (err
// from uploadPump.run).
func (h *Handler) endUpload(ex *exchange, send func(ctlMsg), err error) {
	var mbe *http.MaxBytesError
	switch {
	case err == nil, errors.Is(err, errPumpStopped):
		return
	case errors.Is(err, errUploadTooLarge), errors.As(err, &mbe):
		// The exchange fails first: a reply the worker makes of the
		// broken body must not reach the client, who gets 413 (the
		// limit is ours, or Caddy's own request_body one).
		ex.fail(errUploadTooLarge)
	default:
		h.logger.Info("client request body failed during a streamed upload",
			zap.Uint64("conn_id", ex.id), zap.Error(err))
	}
	send(ctlMsg{payload: zmqx.AppendBodyErr(nil, ex.id)})
}
