package caddyzmq

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/module/internal/httpreply"
)

// requestState is the per-request scratch space, pooled so that the hot
// path allocates little.
type requestState struct {
	enc    mongrel2.HeaderEncoder
	body   []byte
	rr     httpreply.Reader
	frames []queuedFrame
	idBuf  [20]byte
	// lazyBody: the body is read only once the pool is known, since it
	// may be streamed to the worker instead (see stream_upload.go).
	lazyBody bool
	// bodyConsumed: a streamed upload read (part of) the body, so the
	// request can no longer be sent again.
	bodyConsumed bool
	// timer is the reply/stream timer, reused across requests: since Go
	// 1.23 Stop and Reset leave no stale tick in its channel.
	timer *time.Timer
	// dispatchTimer fires at a request's dispatch deadline (plus grace).
	dispatchTimer *time.Timer
	// pool is the pool of the latest attempt, for metrics.
	pool *poolRuntime
}

var statePool = sync.Pool{New: func() any { return new(requestState) }}

// maxPooledBody keeps one big upload from pinning its buffer in the pool.
const maxPooledBody = 1 << 20

// ServeHTTP hands r to a worker and writes back its reply.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	st := statePool.Get().(*requestState)
	defer func() {
		if cap(st.body) > maxPooledBody {
			st.body = nil
		}
		// Frames taken but not written (the request ended on an error or
		// a panic before them) go back now, not when the GC finds them.
		for _, qf := range st.frames {
			qf.frame.release()
		}
		clear(st.frames[:cap(st.frames)]) // earlier, longer takes left pointers past len
		h.countOutcome(r, st, nil)        // fail answers itself and returns nil
		st.pool = nil
		// Released with its state cleared: the next request's outcome
		// must not see this one's reply as done.
		st.rr.Reset(nil, false)
		st.lazyBody, st.bodyConsumed = false, false
		statePool.Put(st)
	}()

	var body []byte
	var up *uploadSpool
	if h.needsSpool(r) {
		if r.ContentLength > h.MaxRequestBody {
			return h.fail(w, r, http.StatusRequestEntityTooLarge,
				fmt.Errorf("request body of %d bytes exceeds max_request_body %d", r.ContentLength, h.MaxRequestBody))
		}
		var err error
		if up, err = newUploadSpool(h.UploadTempStore); err != nil {
			return h.fail(w, r, http.StatusInternalServerError, err)
		}
		defer up.remove()
	} else if h.hasControl && r.Body != nil && r.Body != http.NoBody &&
		(r.ContentLength < 0 || r.ContentLength > streamThreshold) {
		if r.ContentLength > h.MaxRequestBody {
			return h.fail(w, r, http.StatusRequestEntityTooLarge,
				fmt.Errorf("request body of %d bytes exceeds max_request_body %d", r.ContentLength, h.MaxRequestBody))
		}
		st.lazyBody = true
	} else {
		var status int
		var err error
		body, status, err = h.readBody(r, st.body[:0])
		st.body = body
		if err != nil {
			return h.fail(w, r, status, err)
		}
	}

	// Pick a pool; if its request socket cannot take the request (no
	// worker, queues full), try the next one. Nothing was executed then,
	// so this is safe for every method.
	var tried uint64
	lastErr := errNoWorker
	retries := 0
	// The reply timeout runs across re-sends: a request the workers keep
	// not taking still gets its 504 on time.
	replyBy := time.Now().Add(time.Duration(h.ReplyTimeout))
	for {
		p := h.selectPool(r, w, tried)
		if p == nil {
			return h.fail(w, r, http.StatusServiceUnavailable, lastErr)
		}
		if st.lazyBody && !h.streamsUpload(r, p.transport) {
			// This pool cannot take a streamed body: buffer it after all.
			var status int
			var err error
			body, status, err = h.readBody(r, st.body[:0])
			st.body = body
			st.lazyBody = false
			if err != nil {
				return h.fail(w, r, status, err)
			}
		}
		retryable := isIdempotent(r.Method) && retries < h.Retries && up == nil && !st.lazyBody
		err := h.exchange(w, r, st, p, body, up, replyBy, retryable)
		switch {
		case errors.Is(err, errNotTaken):
			// No worker started it by its dispatch deadline, and none
			// will: sending it again is safe for every method.
			p.metrics().resends.Inc()
			h.logger.Debug("re-sending a request no worker took in time", zap.String("uri", r.RequestURI))
			continue
		case errors.Is(err, errNoWorker), errors.Is(err, errQueueFull), errors.Is(err, errBusy):
			tried |= 1 << h.poolIndex(p)
			lastErr = err
			continue
		case errors.Is(err, errPinnedGone):
			continue // nothing was delivered: balance it like a first request
		case errors.Is(err, errWorkerLost), errors.Is(err, errWorkerHung):
			// The worker took the request and vanished before answering
			// (or hangs: it was told to drop it). Repeating is only safe
			// where the method says so.
			if isIdempotent(r.Method) && retries < h.Retries && !st.bodyConsumed {
				msg := "retrying idempotent request after losing its worker"
				if errors.Is(err, errWorkerHung) {
					// Not counted: the hung worker was told to drop it,
					// and it is taken back only while the budget allows.
					// The reply timeout still bounds the whole.
					msg = "retrying idempotent request taken back from a hung worker"
					p.metrics().retriesHung.Inc()
				} else {
					retries++
					p.metrics().retriesLost.Inc()
				}
				h.logger.Warn(msg, zap.String("method", r.Method), zap.String("uri", r.RequestURI), zap.Int("retries", retries))
				continue
			}
			return h.fail(w, r, http.StatusBadGateway, err)
		case err != nil && r.Context().Err() != nil && errors.Is(err, r.Context().Err()):
			return nil // the client left while queued
		}
		return err
	}
}

// dispatchGrace covers the ACK's trip back from a worker that started a
// request just before its deadline.
const dispatchGrace = 250 * time.Millisecond

var errNotTaken = errors.New("no worker took the request by its dispatch deadline")

// isIdempotent: RFC 9110 section 9.2.2.
func isIdempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

func (h *Handler) poolIndex(p *poolRuntime) int {
	for i, q := range h.pools {
		if q == p {
			return i
		}
	}
	return 0
}

// exchange sends the request to pool p and relays the reply. It returns
// errNoWorker or errQueueFull, with nothing written, when the pool could
// not take the request.
//
// retryable marks a request that ServeHTTP would retry if its worker were
// lost: only those are taken back from a hung worker.
func (h *Handler) exchange(w http.ResponseWriter, r *http.Request, st *requestState, p *poolRuntime, body []byte, up *uploadSpool, replyBy time.Time, retryable bool) error {
	st.pool = p
	if err := p.acquire(r, time.Duration(h.QueueTimeout)); err != nil {
		return err
	}
	defer p.release()
	t := p.transport
	ex := t.register(int(h.MaxBufferedReply), retryable)
	defer t.unregister(ex)

	connID := mongrel2.AppendUint(st.idBuf[:0], ex.id)
	ip := clientIP(r)
	path := r.URL.EscapedPath()
	// A dispatch deadline lets Caddy re-send, safely, what no worker took:
	// only when every worker of the pool honours it (speaks zmqx/1).
	var dispatchBy time.Time
	if t.control != nil && h.DispatchTimeout > 0 && t.control.coversPeers() {
		dispatchBy = time.Now().Add(time.Duration(h.DispatchTimeout))
	}
	streaming := st.lazyBody
	if streaming {
		ex.acked = make(chan struct{})
		ex.upload = newUploadFlow(h.ReplyWindow)
	}
	bodyLen := int64(len(body))
	if streaming {
		bodyLen = r.ContentLength
	}
	if up != nil {
		bodyLen = r.ContentLength
		if up.done {
			bodyLen = up.size
		}
	}
	h.encodeHeaders(&st.enc, r, path, bodyLen, ip, p.ControlEndpoint != "", dispatchBy, up, false)
	if streaming {
		st.enc.Add("ZMQX_BODY", "stream")
	}
	buf := requestFrames.get()
	*buf = mongrel2.AppendRequest(*buf, p.sender, string(connID), path, st.enc.Bytes(), body)

	// Session affinity: address the worker that holds the session, if it
	// lives; otherwise balance, and the first worker to acknowledge a
	// request of the session gets it pinned (control.go).
	var session string
	if h.Affinity != nil && t.control != nil {
		session = h.Affinity.sessionKey(r)
	}
	pinned := ""
	if session != "" {
		pinned = t.pins.get(session)
		if pinned == "" {
			// Another request of this session may be on its way to being
			// pinned: wait for it a moment rather than balance elsewhere.
			if wait := t.pins.claim(session); wait != nil {
				timer := time.NewTimer(pendingWait)
				select {
				case <-wait:
				case <-timer.C:
				case <-r.Context().Done():
				}
				timer.Stop()
				pinned = t.pins.get(session)
			} else {
				defer t.pins.unclaim(session) // no ACK came: let others pin
			}
		}
		if pinned != "" && !t.control.isLive(pinned) {
			pinned = ""
		}
		ex.session = session
		if ex.acked == nil {
			ex.acked = make(chan struct{})
		}
		defer func() {
			// ACK and reply travel on different sockets, and the reply
			// may win. Hold the end of the exchange (and so the client's
			// next request) a moment for the ACK that pins the session.
			if ex.workerID() == "" {
				timer := time.NewTimer(pendingWait)
				select {
				case <-ex.acked:
				case <-timer.C:
				}
				timer.Stop()
			}
			if wk := ex.workerID(); wk != "" {
				t.pins.pinFirst(session, wk, t.control.isLive)
			} else {
				t.pins.awaitAck(ex.id, session)
			}
		}()
	}
	if pinned != "" {
		ex.addressed = pinned
		t.control.sendRequest(pinned, *buf)
		requestFrames.put(buf)
	} else if err := t.submit(buf, ex); err != nil {
		return err
	}
	if streaming {
		pumpDone := make(chan struct{})
		pumped := make(chan struct{})
		go func() {
			defer close(pumped)
			h.pumpUpload(r, t, ex, pumpDone, &st.bodyConsumed)
		}()
		// The pump reads r.Body: it must be finished before ServeHTTP
		// returns and net/http reuses the request.
		defer func() { close(pumpDone); <-pumped }()
	}
	if up != nil {
		// The start message is out: write the body to the file (the
		// handler may answer meanwhile to refuse it), then say it is done.
		if !up.done {
			chunk := make([]byte, 64<<10)
			stopped, err := up.spool(r, h.MaxRequestBody, chunk, func() bool { return len(ex.signal) > 0 })
			if err != nil {
				t.notifyDisconnect(ex)
				if errors.Is(err, errUploadTooLarge) {
					return h.fail(w, r, http.StatusRequestEntityTooLarge, err)
				}
				return h.fail(w, r, http.StatusBadRequest, err)
			}
			if stopped {
				h.logger.Debug("worker answered before the upload was complete", zap.Uint64("conn_id", ex.id))
			}
		}
		if up.done {
			h.encodeHeaders(&st.enc, r, path, up.size, ip, p.ControlEndpoint != "", dispatchBy, up, true)
			done := requestFrames.get()
			*done = mongrel2.AppendRequest(*done, p.sender, string(connID), path, st.enc.Bytes(), nil)
			if err := t.submit(done, ex); err != nil {
				return err
			}
		}
	}

	rr := &st.rr
	rr.Reset(w, r.Method == http.MethodHead)
	if st.timer == nil {
		st.timer = time.NewTimer(time.Until(replyBy))
	} else {
		st.timer.Reset(time.Until(replyBy))
	}
	timer := st.timer
	defer timer.Stop()
	var dispatchC <-chan time.Time
	if !dispatchBy.IsZero() {
		d := time.Until(dispatchBy) + dispatchGrace
		if st.dispatchTimer == nil {
			st.dispatchTimer = time.NewTimer(d)
		} else {
			st.dispatchTimer.Reset(d)
		}
		defer st.dispatchTimer.Stop()
		dispatchC = st.dispatchTimer.C
	}
	gotFrames := false
	var rc *http.ResponseController
	// Reply bytes written to the client and not yet granted back to the
	// worker as credit (control channel only).
	owed := 0
	creditBatch := int(h.ReplyWindow / 4)
	for {
		select {
		case <-ex.signal:
		case <-dispatchC:
			if ex.workerID() == "" && !gotFrames {
				return errNotTaken
			}
			continue
		case <-timer.C:
			if !rr.HeadDone() {
				t.notifyDisconnect(ex)
				return h.fail(w, r, http.StatusGatewayTimeout,
					fmt.Errorf("no reply from a worker of pool %s within %s", p.Name, time.Duration(h.ReplyTimeout)))
			}
			h.abort(w, r, t, ex, fmt.Errorf("no reply frame within stream_timeout %s", time.Duration(h.StreamTimeout)))
		case <-r.Context().Done():
			t.notifyDisconnect(ex)
			h.logger.Debug("client went away before the reply was complete",
				zap.Uint64("conn_id", ex.id), zap.Error(r.Context().Err()))
			return nil
		}

		frames, xerr := ex.take(st.frames[:0])
		st.frames = frames
		if !gotFrames && len(frames) > 0 {
			p.metrics().observeFirstByte(replyBy.Add(-time.Duration(h.ReplyTimeout)))
		}
		gotFrames = gotFrames || len(frames) > 0
		for i, qf := range frames {
			owed += len(qf.body)
			err := rr.Feed(qf.body)
			qf.frame.release() // Feed keeps nothing of it
			frames[i].frame = nil
			if err != nil {
				var ce httpreply.ClientError
				if errors.As(err, &ce) {
					t.notifyDisconnect(ex)
					h.logger.Debug("client went away during the reply", zap.Uint64("conn_id", ex.id), zap.Error(err))
					return nil
				}
				if !rr.HeadDone() {
					t.notifyDisconnect(ex)
					return h.fail(w, r, http.StatusBadGateway, fmt.Errorf("bad reply from worker: %w", err))
				}
				h.abort(w, r, t, ex, fmt.Errorf("bad reply from worker: %w", err))
			}
			if rr.Done() {
				return nil
			}
		}
		if xerr != nil {
			switch {
			case rr.HeadDone():
				h.abort(w, r, t, ex, xerr)
			case errors.Is(xerr, errPinnedGone):
				t.pins.forget(session)
				return xerr // the caller sends it again, balanced
			case errors.Is(xerr, errNoWorker), errors.Is(xerr, errWorkerLost):
				return xerr // the caller tries another pool, or retries
			case errors.Is(xerr, errNotTaken):
				return xerr // handed back (NACK): the caller re-sends it
			case errors.Is(xerr, errWorkerHung):
				t.notifyDisconnect(ex) // its handler must not run it too
				return xerr
			case errors.Is(xerr, errStopped):
				return h.fail(w, r, http.StatusServiceUnavailable, xerr)
			default:
				return h.fail(w, r, http.StatusBadGateway, xerr)
			}
		}
		if rr.HeadDone() {
			// The response is streaming: the client sees each frame as it
			// arrives (Server-Sent Events, long polls).
			if rc == nil {
				rc = http.NewResponseController(w)
			}
			if err := rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
				t.notifyDisconnect(ex)
				return nil
			}
			if t.control != nil && owed >= creditBatch {
				if wk := ex.workerID(); wk != "" {
					t.control.credit(wk, ex.id, owed)
					owed = 0
				}
			}
			if h.StreamTimeout > 0 {
				timer.Reset(time.Duration(h.StreamTimeout))
			} else {
				timer.Stop()
			}
		}
	}
}

// readBody reads the request body into buf, up to MaxRequestBody.
func (h *Handler) readBody(r *http.Request, buf []byte) ([]byte, int, error) {
	// A server request with ContentLength 0 has no body (net/http sets -1
	// when the length is unknown), but Caddy may have wrapped its NoBody:
	// reading that costs more than the rest of a GET's body handling.
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return buf, 0, nil
	}
	limit := h.MaxRequestBody
	if r.ContentLength > limit {
		return buf, http.StatusRequestEntityTooLarge,
			fmt.Errorf("request body of %d bytes exceeds max_request_body %d", r.ContentLength, limit)
	}
	if r.ContentLength > 0 && int64(cap(buf)) < r.ContentLength {
		buf = make([]byte, 0, r.ContentLength)
	}
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if int64(len(buf)) > limit {
			return buf, http.StatusRequestEntityTooLarge,
				fmt.Errorf("request body exceeds max_request_body %d", limit)
		}
		if err == io.EOF {
			return buf, 0, nil
		}
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				return buf, http.StatusRequestEntityTooLarge, err
			}
			return buf, http.StatusBadRequest, fmt.Errorf("reading request body: %w", err)
		}
	}
}

// fail answers the client with status and a short reason, and logs what
// happened. It is used only before any of the reply was written.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, status int, err error) error {
	noteFailure(r, status)
	lvl := h.logger.Error
	if status == http.StatusRequestEntityTooLarge || status == http.StatusBadRequest {
		lvl = h.logger.Info
	}
	lvl("zmq request failed",
		zap.Int("status", status),
		zap.String("method", r.Method),
		zap.String("uri", r.RequestURI),
		zap.Error(err))
	hdr := w.Header()
	hdr.Set("Content-Type", "text/plain; charset=utf-8")
	hdr.Set("X-Content-Type-Options", "nosniff")
	msg := strconv.Itoa(status) + " " + http.StatusText(status) + ": " + reason(status) + "\n"
	hdr.Set("Content-Length", strconv.Itoa(len(msg)))
	w.WriteHeader(status)
	_, _ = io.WriteString(w, msg)
	return nil
}

func reason(status int) string {
	switch status {
	case http.StatusServiceUnavailable:
		return "no worker available"
	case http.StatusGatewayTimeout:
		return "the worker did not reply in time"
	case http.StatusBadGateway:
		return "the worker sent an invalid reply"
	case http.StatusRequestEntityTooLarge:
		return "request body too large"
	case http.StatusBadRequest:
		return "malformed request body"
	}
	return "request failed"
}

// abort ends a response that has already started: the client must not take
// a truncated body for a complete one, so the connection (or HTTP/2 stream)
// is reset, as reverse_proxy does.
func (h *Handler) abort(w http.ResponseWriter, r *http.Request, t *transport, ex *exchange, err error) {
	t.notifyDisconnect(ex)
	h.logger.Error("aborting incomplete response",
		zap.String("method", r.Method),
		zap.String("uri", r.RequestURI),
		zap.Uint64("conn_id", ex.id),
		zap.Error(err))
	_ = http.NewResponseController(w).Flush()
	panic(http.ErrAbortHandler)
}
