package caddyzmq

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
	"github.com/zmqbridge/caddy-zmq/module/internal/httpreply"
)

// The path of one request: ServeHTTP decides how its body travels
// (call.takeBody), then call.serve picks a pool and tries it (call.try)
// until one answers or the request fails. An attempt (attempt.go) submits
// the request (submitRequest, with session affinity in pin and settlePin),
// sends its body (sendBody: streamed by a pump, or spooled to a file) and
// relays the reply (relay.go: relay, write, flush; ended, timedOut,
// clientLeft and abort for the ways it stops early). Failures go back to
// Caddy as caddyhttp.Error (statusError), so a site's handle_errors routes
// and Caddy's error log see them.

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
	// call lives here rather than on ServeHTTP's stack, which it would
	// leave for the heap: escape analysis sees an attempt's fields as one,
	// and its exchange and transport do escape.
	call call
	// pool is the pool of the latest attempt, for metrics.
	pool *poolRuntime
}

var statePool = sync.Pool{New: func() any { return new(requestState) }}

// maxPooledBody keeps one big upload from pinning its buffer in the pool.
const maxPooledBody = 1 << 20

// recycle returns st to the pool.
func (st *requestState) recycle() {
	if cap(st.body) > maxPooledBody {
		st.body = nil
	}
	// Frames taken but not written (the request ended on an error or a
	// panic before them) go back now, not when the GC finds them.
	for _, qf := range st.frames {
		qf.frame.release()
	}
	clear(st.frames[:cap(st.frames)]) // earlier, longer takes left pointers past len
	// Released with its state cleared: the next request's outcome must
	// not see this one's reply as done.
	st.rr.Reset(nil, false)
	st.pool = nil
	st.lazyBody, st.bodyConsumed = false, false
	st.call = call{} // holds the request, its writer and its body
	statePool.Put(st)
}

// startTimer arms the pooled timer *t to fire after d.
func startTimer(t **time.Timer, d time.Duration) *time.Timer {
	if *t == nil {
		*t = time.NewTimer(d)
	} else {
		(*t).Reset(d)
	}
	return *t
}

// Placeholders the handler sets on the request's replacer (documented on
// Handler).
const (
	placeholderPool     = "http.zmq.pool"
	placeholderWorkerID = "http.zmq.worker_id"
	placeholderRetries  = "http.zmq.retries"
	placeholderResends  = "http.zmq.resends"
)

// call is one HTTP request on its way through the handler: what stays the
// same across its attempts, and what they have done so far.
type call struct {
	h    *Handler
	w    http.ResponseWriter
	r    *http.Request
	st   *requestState
	repl *caddy.Replacer // nil outside Caddy (unit tests)

	path string // r's escaped path, as the worker sees it
	ip   string // the client's address, as Caddy trusts it

	body []byte       // a buffered body
	up   *uploadSpool // a body spooled to a temporary file

	// replyBy is when the reply must have started. The reply timeout runs
	// across re-sends: a request the workers keep not taking still gets
	// its 504 on time.
	replyBy time.Time

	attempts int
	// retries and resends count the attempts after the first, for the
	// placeholders: a retry follows a worker that took the request (it
	// may have run), a re-send one that no worker started.
	retries, resends int
	// retryNext: the next attempt is a retry.
	retryNext bool
	// lostRetries counts the retries that use up Handler.Retries.
	lostRetries int
	// workerNoted: the worker_id placeholder was set.
	workerNoted bool
}

// ServeHTTP hands r to a worker and writes back its reply.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) (err error) {
	if h.Broadcast != nil {
		return h.serveBroadcast(w, r) // broadcast.go
	}
	if isWebSocketUpgrade(r) || isExtendedConnect(r) {
		return h.serveWebSocket(w, r) // websocket.go
	}
	st := statePool.Get().(*requestState)
	defer st.recycle()
	defer func() { h.countOutcome(r, st, err) }()
	c := &st.call
	*c = call{h: h, w: w, r: r, st: st}
	c.repl, _ = r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if err := c.takeBody(); err != nil {
		return err
	}
	if c.up != nil {
		defer c.up.remove()
	}
	return c.serve()
}

// takeBody decides how the body travels: through a temporary file
// (upload_temp_store), streamed on the control channel once a worker took
// the request (decided for good per pool, in serve), or inline, read now.
func (c *call) takeBody() error {
	h, r := c.h, c.r
	switch {
	case h.needsSpool(r):
		if r.ContentLength > h.MaxRequestBody {
			return c.statusError(http.StatusRequestEntityTooLarge, errBodyTooLarge(r.ContentLength, h.MaxRequestBody))
		}
		up, err := newUploadSpool(h.UploadTempStore)
		if err != nil {
			return c.statusError(http.StatusInternalServerError, err)
		}
		c.up = up
	case h.hasControl && r.Body != nil && r.Body != http.NoBody &&
		(r.ContentLength < 0 || r.ContentLength > streamThreshold):
		if r.ContentLength > h.MaxRequestBody {
			return c.statusError(http.StatusRequestEntityTooLarge, errBodyTooLarge(r.ContentLength, h.MaxRequestBody))
		}
		c.st.lazyBody = true
	default:
		return c.bufferBody()
	}
	return nil
}

// bufferBody reads the whole body now, to send it inline.
func (c *call) bufferBody() error {
	body, status, err := c.h.readBody(c.r, c.st.body[:0])
	c.st.body, c.body = body, body
	c.st.lazyBody = false
	if err != nil {
		return c.statusError(status, err)
	}
	return nil
}

func errBodyTooLarge(n, limit int64) error {
	return fmt.Errorf("request body of %d bytes exceeds max_request_body %d", n, limit)
}

// serve picks a pool and makes attempts until one answers or the request
// fails. A pool whose request socket cannot take the request (no worker,
// queues full) is left for the next one: nothing was executed, so this is
// safe for every method.
func (c *call) serve() error {
	h, r := c.h, c.r
	c.path = r.URL.EscapedPath()
	c.ip = clientIP(r)
	c.replyBy = time.Now().Add(time.Duration(h.ReplyTimeout))
	var tried uint64
	lastErr := errNoWorker
	for {
		p := h.selectPool(r, c.w, tried)
		if p == nil {
			if h.awaitRedial(r.Context()) {
				tried = 0 // workers dialled again after a key removal
				continue
			}
			return c.statusError(http.StatusServiceUnavailable, lastErr)
		}
		if c.st.lazyBody && !h.streamsUpload(r, p.transport) {
			// This pool cannot take a streamed body: buffer it after all.
			if err := c.bufferBody(); err != nil {
				return err
			}
		}
		c.begin(p)
		err := c.try(p)
		if err == nil {
			return nil
		}
		switch {
		case isHandlerError(err):
			return err
		case errors.Is(err, errNotTaken):
			// No worker started it by its dispatch deadline, and none
			// will: sending it again is safe for every method.
			p.metrics().resends.Inc()
			h.logger.Debug("re-sending a request no worker took in time", zap.String("uri", r.RequestURI))
		case errors.Is(err, errNoWorker), errors.Is(err, errQueueFull), errors.Is(err, errBusy):
			tried |= 1 << h.poolIndex(p)
			lastErr = fmt.Errorf("pool %s: %w", p.Name, err)
		case errors.Is(err, errAddresseeGone):
			// Nothing was delivered: balance it like a first request.
		case errors.Is(err, errWorkerLost), errors.Is(err, errWorkerHung):
			if err := c.retryAfterLoss(err); err != nil {
				return err
			}
		case errors.Is(err, errStopped):
			return c.statusError(http.StatusServiceUnavailable, err)
		default:
			return c.statusError(http.StatusBadGateway, err)
		}
	}
}

// retryAfterLoss decides about a request whose worker took it and vanished
// before answering (or hangs: it was told to drop it): repeating it is only
// safe where the method says so, and within Handler.Retries. It returns nil
// for a retry, or the client's status.
func (c *call) retryAfterLoss(err error) error {
	h, r := c.h, c.r
	if !isIdempotent(r.Method) || c.lostRetries >= h.Retries || c.st.bodyConsumed {
		return c.statusError(http.StatusBadGateway, err)
	}
	msg := "retrying idempotent request after losing its worker"
	switch {
	case errors.Is(err, errWorkerHung):
		// Not counted: the hung worker was told to drop it, and it is
		// taken back only while the budget allows. The reply timeout
		// still bounds the whole.
		msg = "retrying idempotent request taken back from a hung worker"
		c.st.pool.metrics().retriesHung.Inc()
	case errors.Is(err, errKeyRemoved):
		// Not counted either: the operator removed the worker's key, the
		// request did nothing to it. Until the removed worker's request
		// connection is closed, PUSH may hand the retry to it again.
		msg = "retrying idempotent request that a worker whose key was removed had taken"
		c.st.pool.metrics().retriesLost.Inc()
	default:
		c.lostRetries++
		c.st.pool.metrics().retriesLost.Inc()
	}
	h.logger.Warn(msg, zap.String("method", r.Method), zap.String("uri", r.RequestURI), zap.Int("retries", c.lostRetries))
	c.retryNext = true
	return nil
}

// begin counts an attempt on pool p and shows it in the placeholders.
func (c *call) begin(p *poolRuntime) {
	if c.attempts > 0 {
		if c.retryNext {
			c.retries++
		} else {
			c.resends++
		}
	}
	c.attempts++
	c.retryNext = false
	if c.repl == nil {
		return
	}
	c.repl.Set(placeholderPool, p.nameValue)
	c.repl.Set(placeholderRetries, c.retries)
	c.repl.Set(placeholderResends, c.resends)
	// Set even while unknown: Caddy leaves an unknown placeholder in a
	// header as it is. This also drops an earlier attempt's worker.
	c.repl.Set(placeholderWorkerID, "")
	c.workerNoted = false
}

// noteWorker shows the worker that acknowledged ex in the placeholders.
func (c *call) noteWorker(ex *exchange) {
	if c.repl == nil || c.workerNoted {
		return
	}
	if wk := ex.workerID(); wk != "" {
		c.repl.Set(placeholderWorkerID, wk)
		c.workerNoted = true
	}
}

// retryable reports whether the next attempt would be retried if its
// worker were lost: only those are taken back from a hung worker.
func (c *call) retryable() bool {
	return isIdempotent(c.r.Method) && c.lostRetries < c.h.Retries && c.up == nil && !c.st.lazyBody
}

// statusError is the error handed to Caddy for status: Caddy logs it and runs the
// site's handle_errors routes, or writes the bare status. A client that
// went away gets 499, as with reverse_proxy (Caddy logs 4xx at debug
// level only: nothing to act on).
func (c *call) statusError(status int, err error) error { return statusErrorFor(c.r, status, err) }

// statusErrorFor is statusError for r, for a broadcast too.
func statusErrorFor(r *http.Request, status int, err error) error {
	if r.Context().Err() != nil {
		status = statusClientClosed
	}
	return caddyhttp.Error(status, fmt.Errorf("zmq: %w", err))
}

// statusClientClosed is nginx's and reverse_proxy's "client closed
// request": no standard status says it.
const statusClientClosed = 499

// dispatchGrace covers the ACK's trip back from a worker that started a
// request just before its deadline.
const dispatchGrace = zmqx.DispatchGrace

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
		return buf, http.StatusRequestEntityTooLarge, errBodyTooLarge(r.ContentLength, limit)
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

// isHandlerError reports whether err already carries the client's status.
func isHandlerError(err error) bool {
	_, ok := errors.AsType[caddyhttp.HandlerError](err)
	return ok
}
