package caddyzmq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
	"github.com/zmqbridge/caddy-zmq/module/internal/httpreply"
)

// Broadcast makes a route a scatter-gather: each request goes to every
// live worker of the handler's pools, addressed to each over the control
// channel, and the response streams their answers as NDJSON, one line per
// worker as it answers or fails, then a summary line (docs/broadcast.md).
// The set of workers is taken when the request arrives. A worker lost
// (dead, frozen) or found hung meanwhile is reported failed as soon as the
// control channel knows; Timeout bounds the whole. Each worker is asked
// once and reported once. Workers without the control channel (Mongrel2
// handlers) cannot be addressed and are not part of the set.
type Broadcast struct {
	// Timeout bounds the whole broadcast: workers that have not answered
	// by then are reported as timed out. Default: reply_timeout.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// MaxAnswer is the largest answer body kept per worker, in bytes; a
	// larger answer is reported failed. Default: 1 MiB.
	MaxAnswer int64 `json:"max_answer,omitempty"`
}

// DefaultMaxBroadcastAnswer is Broadcast.MaxAnswer's default.
const DefaultMaxBroadcastAnswer = 1 << 20

// unmarshalBroadcast parses "broadcast [<timeout> [<max_answer bytes>]]".
func (h *Handler) unmarshalBroadcast(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) > 2 {
		return d.Errf("broadcast: expected [<timeout> [<max_answer bytes>]]")
	}
	h.Broadcast = &Broadcast{}
	if len(args) > 0 {
		dur, err := caddy.ParseDuration(args[0])
		if err != nil || dur <= 0 {
			return d.Errf("broadcast: bad timeout %q", args[0])
		}
		h.Broadcast.Timeout = caddy.Duration(dur)
	}
	if len(args) > 1 {
		n, err := strconv.ParseInt(args[1], 10, 64)
		if err != nil || n <= 0 {
			return d.Errf("broadcast: bad max_answer %q", args[1])
		}
		h.Broadcast.MaxAnswer = n
	}
	return nil
}

// validateBroadcast: a broadcast needs workers it can address.
func (h *Handler) validateBroadcast() error {
	if h.Broadcast == nil {
		return nil
	}
	if h.Broadcast.Timeout < 0 || h.Broadcast.MaxAnswer < 0 {
		return errors.New("zmq: broadcast timeout and max_answer must not be negative")
	}
	if h.ControlEndpoint == "" && !slices.ContainsFunc(h.Pools, func(p Pool) bool { return p.ControlEndpoint != "" }) {
		return errors.New("zmq: broadcast needs a control_endpoint: workers are addressed over the control channel")
	}
	return nil
}

// liveWorkers lists the workers a request may be addressed to now (those
// isLive accepts), sorted.
func (c *controlPlane) liveWorkers() []string {
	c.mu.Lock()
	ids := make([]string, 0, len(c.workers))
	for id := range c.workers {
		ids = append(ids, id)
	}
	c.mu.Unlock()
	ids = slices.DeleteFunc(ids, func(id string) bool { return !c.isLive(id) })
	slices.Sort(ids)
	return ids
}

// awaitsBroadcastAck reports whether ex is a broadcast request sent to
// worker that has not acknowledged it: lost with that worker too.
func (ex *exchange) awaitsBroadcastAck(worker string) bool {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	return ex.broadcastTo == worker && ex.worker == ""
}

// bcTarget is one worker asked.
type bcTarget struct {
	pool   *poolRuntime
	worker string
	ex     *exchange
	err    error     // why it was not sent (no in-flight slot)
	sent   time.Time // when it was sent (caddy_zmq_first_byte_seconds)
}

// bcLine is one NDJSON line of a broadcast response.
type bcLine struct {
	Type   string `json:"type"` // answer, failed, timed_out, summary
	Worker string `json:"worker,omitempty"`
	Pool   string `json:"pool,omitempty"`
	// answer
	Status  int         `json:"status,omitempty"`
	Headers http.Header `json:"headers,omitempty"`
	// Body is the answer's body when it is UTF-8, BodyBase64 otherwise.
	Body       *string `json:"body,omitempty"`
	BodyBase64 []byte  `json:"body_base64,omitempty"`
	// failed
	Error string `json:"error,omitempty"`
	// outcome is what caddy_zmq_requests_total counts for the worker
	// (how broadcasts count: metrics.go, before stateCollector).
	outcome outcome
	// summary
	Asked      *int     `json:"asked,omitempty"`
	Answered   *int     `json:"answered,omitempty"`
	Failed     *int     `json:"failed,omitempty"`
	TimedOut   *int     `json:"timed_out,omitempty"`
	AnsweredBy []string `json:"answered_by,omitempty"`
	FailedBy   []string `json:"failed_by,omitempty"`
	TimedOutBy []string `json:"timed_out_by,omitempty"`
	ElapsedMS  *int64   `json:"elapsed_ms,omitempty"`
}

// serveBroadcast sends r to every live worker and streams their answers.
func (h *Handler) serveBroadcast(w http.ResponseWriter, r *http.Request) error {
	started := time.Now()
	body, status, err := h.readBody(r, nil)
	if err != nil {
		err = statusErrorFor(r, status, err)
		h.countUnsent(err)
		return err
	}
	var targets []*bcTarget
	for _, p := range h.pools {
		if c := p.transport.control; c != nil {
			for _, id := range c.liveWorkers() {
				targets = append(targets, &bcTarget{pool: p, worker: id})
			}
		}
	}
	if len(targets) == 0 {
		err := statusErrorFor(r, http.StatusServiceUnavailable, errors.New("broadcast: no live worker on a control channel"))
		h.countUnsent(err)
		return err
	}
	timeout := time.Duration(h.Broadcast.Timeout)
	if timeout <= 0 {
		timeout = time.Duration(h.ReplyTimeout)
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()

	hdr := w.Header()
	hdr.Set("Content-Type", "application/x-ndjson")
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	_ = rc.Flush()

	results := make(chan bcLine, len(targets))
	headers := h.broadcastHeaders(r, len(body), len(targets))
	// The broadcast's timeout bounds the wait for in-flight slots too.
	slotReq := r.WithContext(ctx)
	for _, tg := range targets {
		h.sendBroadcast(slotReq, tg, headers, body)
		// Gathered at once: its slot comes free with its answer, for a
		// target further down that waits for one of the same pool.
		go func() {
			line := h.gather(ctx, r, tg)
			tg.pool.metrics().outcomes[line.outcome].Inc()
			results <- line
		}()
	}
	enc := json.NewEncoder(w)
	var answered, failed, timedOut []string
	for range targets {
		line := <-results
		switch line.Type {
		case "answer":
			answered = append(answered, line.Worker)
		case "timed_out":
			timedOut = append(timedOut, line.Worker)
		default:
			failed = append(failed, line.Worker)
		}
		if r.Context().Err() == nil {
			_ = enc.Encode(line)
			_ = rc.Flush()
		}
	}
	asked, nA, nF, nT := len(targets), len(answered), len(failed), len(timedOut)
	elapsed := time.Since(started).Milliseconds()
	summary := bcLine{Type: "summary", Asked: &asked, Answered: &nA, Failed: &nF, TimedOut: &nT,
		AnsweredBy: answered, FailedBy: failed, TimedOutBy: timedOut, ElapsedMS: &elapsed}
	if nF+nT > 0 {
		h.logger.Warn("broadcast incomplete", zap.String("uri", r.RequestURI), zap.Int("asked", asked),
			zap.Strings("failed", failed), zap.Strings("timed_out", timedOut))
	}
	if r.Context().Err() != nil {
		return nil // the client left
	}
	_ = enc.Encode(summary)
	_ = rc.Flush()
	return nil
}

// broadcastHeaders encodes the header block every target of a broadcast
// of r gets, marked with the number of workers asked.
func (h *Handler) broadcastHeaders(r *http.Request, bodyLen, asked int) []byte {
	var enc mongrel2.HeaderEncoder
	h.encodeHeaders(&enc, r, r.URL.EscapedPath(), int64(bodyLen), clientIP(r), true, time.Time{}, nil, false)
	enc.Add(zmqx.HeaderBroadcast, strconv.Itoa(asked))
	return enc.Bytes()
}

// sendBroadcast registers an exchange for tg and addresses the request to
// its worker. A target whose pool had no free in-flight slot in time keeps
// a nil exchange and the reason (gather reports it failed).
func (h *Handler) sendBroadcast(r *http.Request, tg *bcTarget, headers, body []byte) {
	if err := tg.pool.acquire(r, time.Duration(h.QueueTimeout)); err != nil {
		tg.err = err // gather reports it failed
		return
	}
	tg.sent = time.Now()
	t := tg.pool.transport
	// Retryable as far as hung detection goes: a broadcast request
	// held by a hung worker is taken back, which reports it failed.
	ex := t.register(int(h.MaxBufferedReply), true)
	ex.addressed = tg.worker
	ex.mu.Lock()
	ex.broadcastTo = tg.worker
	ex.mu.Unlock()
	tg.ex = ex
	frame := mongrel2.AppendRequest(nil, tg.pool.sender, strconv.FormatUint(ex.id, 10), r.URL.EscapedPath(), headers, body)
	t.control.sendRequest(tg.worker, frame)
}

// gather waits for one target's answer and returns its line.
func (h *Handler) gather(ctx context.Context, r *http.Request, tg *bcTarget) bcLine {
	line := bcLine{Worker: tg.worker, Pool: tg.pool.Name}
	if tg.ex == nil {
		line.Type, line.Error, line.outcome = "failed", "not sent: "+tg.err.Error(), outcomeNoWorker
		if r.Context().Err() != nil {
			line.outcome = outcomeClientGone
		}
		return line
	}
	defer tg.pool.release()
	t, ex := tg.pool.transport, tg.ex
	defer t.unregister(ex)
	limit := h.Broadcast.MaxAnswer
	if limit <= 0 {
		limit = DefaultMaxBroadcastAnswer
	}
	rec := &answerRecorder{header: http.Header{}, limit: limit}
	var rr httpreply.Reader
	rr.Reset(rec, r.Method == http.MethodHead)
	defer rr.Release()
	owed, creditBatch := 0, int(h.ReplyWindow/4)
	var frames []queuedFrame
	firstByte := false
	for {
		select {
		case <-ex.signal:
		case <-ctx.Done():
			t.notifyDisconnect(ex)
			if r.Context().Err() != nil {
				line.Type, line.Error, line.outcome = "failed", "the client went away", outcomeClientGone
				return line
			}
			line.Type, line.outcome = "timed_out", outcomeTimeout
			return line
		}
		var xerr error
		frames, xerr = ex.take(frames[:0])
		if len(frames) > 0 && !firstByte {
			firstByte = true
			tg.pool.metrics().observeFirstByte(tg.sent)
		}
		var ferr error
		for _, qf := range frames {
			owed += len(qf.body)
			if ferr == nil && !rr.Done() {
				ferr = rr.Feed(qf.body)
			}
			qf.frame.release()
		}
		clear(frames)
		switch {
		case ferr != nil:
			t.notifyDisconnect(ex)
			line.Type, line.Error, line.outcome = "failed", "bad answer: "+ferr.Error(), outcomeBadGateway
			return line
		case rr.Done():
			line.Type, line.Status, line.Headers, line.outcome = "answer", rec.status, rec.header, outcomeAnswered
			if utf8.Valid(rec.body) {
				s := string(rec.body)
				line.Body = &s
			} else {
				line.BodyBase64 = rec.body
			}
			return line
		case xerr != nil:
			if errors.Is(xerr, errWorkerHung) {
				t.notifyDisconnect(ex) // its handler must not run it later
			}
			line.Type, line.Error, line.outcome = "failed", xerr.Error(), broadcastFailure(xerr)
			return line
		}
		if owed >= creditBatch {
			if wk := ex.workerID(); wk != "" {
				t.control.credit(wk, ex.id, owed)
				owed = 0
			}
		}
	}
}

// broadcastFailure is how a target whose exchange failed with err counts:
// 503 when its request never reached the worker (not routable: the worker
// left before it was sent; or Caddy stopping), as a request that was not
// sent; 502 when the worker took it and failed it (lost, hung).
func broadcastFailure(err error) outcome {
	if errors.Is(err, errAddresseeGone) || errors.Is(err, errReqNotQueued) || errors.Is(err, errStopped) {
		return outcomeNoWorker
	}
	return outcomeBadGateway
}

// answerRecorder is the http.ResponseWriter a worker's answer is parsed
// into, up to limit body bytes.
type answerRecorder struct {
	header http.Header
	status int
	body   []byte
	limit  int64
}

var errAnswerTooLarge = errors.New("answer larger than the broadcast's max_answer")

func (a *answerRecorder) Header() http.Header { return a.header }

func (a *answerRecorder) WriteHeader(status int) {
	if a.status == 0 {
		a.status = status
	}
}

func (a *answerRecorder) Write(p []byte) (int, error) {
	if a.status == 0 {
		a.status = http.StatusOK
	}
	if int64(len(a.body)+len(p)) > a.limit {
		return 0, fmt.Errorf("%w (%d bytes)", errAnswerTooLarge, a.limit)
	}
	a.body = append(a.body, p...)
	return len(p), nil
}
