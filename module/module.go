// Package caddyzmq is a Caddy HTTP handler that serves requests with ZeroMQ
// workers speaking Mongrel2's handler protocol. It stands where
// reverse_proxy stands: Caddy terminates HTTP/1.1, HTTP/2 and HTTP/3 with
// automatic HTTPS, PUSHes each request to the workers and writes back the
// raw HTTP response they PUBlish.
package caddyzmq

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Defaults, documented on the fields that use them.
const (
	DefaultRequestEndpoint  = "tcp://127.0.0.1:9997"
	DefaultReplyEndpoint    = "tcp://127.0.0.1:9996"
	DefaultReplyTimeout     = 30 * time.Second
	DefaultMaxRequestBody   = 10 << 20
	DefaultMaxBufferedReply = 64 << 20
	DefaultHeartbeat        = 200 * time.Millisecond
	DefaultReplyWindow      = 4 << 20
	DefaultMaxInflight      = 10000
	DefaultQueueTimeout     = 5 * time.Second
	DefaultDispatchTimeout  = time.Second
	DefaultHungTimeout      = 1500 * time.Millisecond
	DefaultUploadThreshold  = 20480
	minReplyWindow          = 256 << 10
)

// Handler serves HTTP requests with ZeroMQ workers. With the default
// topology, Mongrel2's, Caddy binds a PUSH socket on the request endpoint and
// a SUB socket on the reply endpoint; workers connect a PULL and a PUB to
// them. Any Mongrel2 handler works unchanged behind it.
//
// Failures reach Caddy as handler errors, so a site's handle_errors routes
// run for them with the {http.error.*} placeholders, and Caddy logs them:
// 503 no worker could take the request (none connected, queues full,
// max_inflight reached for queue_timeout), 504 no reply started within
// reply_timeout, 502 the worker sent an invalid reply or was lost with a
// request that could not be retried, 413 the body is over
// max_request_body, 400 the client's body broke, 499 the client went away
// (as with reverse_proxy). Once the response has started, a failure aborts
// it, so a client never takes a truncated body for a complete one.
//
// This handler sets these placeholders on the request, for logs, headers
// (with the header directive's defer) and handle_errors routes:
//
// Placeholder | Description
// ------------|-------------
// `{http.zmq.pool}` | The name of the pool of the last attempt (empty when no pool could be tried)
// `{http.zmq.worker_id}` | The control-channel identity of the worker that took the request, once its acknowledgement has arrived (a reply may overtake it: a response header may lack it); empty for workers that do not speak zmqx/1 (Mongrel2 handlers)
// `{http.zmq.retries}` | How many times the request was sent again after a worker had taken it (lost or hung): it may have run more than once (idempotent methods only)
// `{http.zmq.resends}` | How many times the request was sent again because no worker had started it (dispatch deadline passed, handed back, pool unable to take it, pinned worker gone): it ran at most once
type Handler struct {
	// RequestEndpoint is where Caddy binds the PUSH socket that hands
	// requests to workers (Mongrel2's send_spec). Default:
	// tcp://127.0.0.1:9997.
	RequestEndpoint string `json:"request_endpoint,omitempty"`

	// ReplyEndpoint is where Caddy binds the SUB socket that workers
	// publish replies to (Mongrel2's recv_spec). Default:
	// tcp://127.0.0.1:9996.
	ReplyEndpoint string `json:"reply_endpoint,omitempty"`

	// ControlEndpoint is where Caddy binds the ROUTER socket of the
	// control channel, this project's extension to Mongrel2's protocol:
	// workerkit workers connect to it to acknowledge the requests they
	// take and to receive reply credit (flow control for large responses)
	// and disconnects. Mongrel2 handlers ignore it. Default: off.
	ControlEndpoint string `json:"control_endpoint,omitempty"`

	// ReplyWindow is the reply credit, in bytes, that a worker on the
	// control channel may have outstanding per request: a slow client
	// slows the worker down instead of filling memory, and Caddy holds at
	// most this much of a response per request. Default: 4 MiB (16 reply
	// frames: enough to keep a fast download's pipeline full across the
	// credit round trip; a larger window only holds more memory).
	ReplyWindow int64 `json:"reply_window,omitempty"`

	// Pools, when set, replace the endpoints above: each pool is a set of
	// workers behind its own sockets, and LoadBalancing picks one per
	// request among those with a connected worker. Default: one pool made
	// of the endpoints above.
	Pools []Pool `json:"pools,omitempty"`

	// SelectionPolicyRaw picks the pool for a request with one of Caddy's
	// reverse_proxy selection policies (random, round_robin, first,
	// ip_hash, client_ip_hash, uri_hash, header, query, cookie,
	// weighted_round_robin), which see each pool as an upstream whose
	// address is the pool name. Default: random.
	SelectionPolicyRaw json.RawMessage `json:"lb_policy,omitempty" caddy:"namespace=http.reverse_proxy.selection_policies inline_key=policy"`

	// Affinity pins the requests of one session, named by a cookie or a
	// header, to one worker process while it lives (control channel
	// required). Default: off.
	Affinity *Affinity `json:"affinity,omitempty"`

	// Broadcast makes the route a scatter-gather: each request goes to
	// every live worker on a control channel, and the response lists their
	// answers (broadcast.go). Default: off.
	Broadcast *Broadcast `json:"broadcast,omitempty"`

	// SenderID is the UUID that tags every request and that replies must
	// carry (Mongrel2's send_ident; Caddy subscribes to exactly it). Give
	// each front end of a cluster its own. Default: derived, per pool,
	// from the host name and the pool's endpoints, so it is stable across
	// restarts and reloads and differs between hosts.
	SenderID string `json:"sender_id,omitempty"`

	// HeaderFormat is how request headers are encoded: "json" or
	// "tnetstring" (Mongrel2's handler `protocol`). Default: json.
	HeaderFormat string `json:"header_format,omitempty"`

	// ReplyTimeout is how long Caddy waits for a worker to start its
	// reply. The client then gets 504. Default: 30s.
	ReplyTimeout caddy.Duration `json:"reply_timeout,omitempty"`

	// StreamTimeout is how long Caddy waits for the next reply frame once
	// the response has started; past it the client connection is closed.
	// Default: 0, no limit (streams such as Server-Sent Events may idle).
	StreamTimeout caddy.Duration `json:"stream_timeout,omitempty"`

	// MaxRequestBody is the largest request body passed to a worker, in
	// bytes. Larger ones get 413. Default: 10 MiB.
	MaxRequestBody int64 `json:"max_request_body,omitempty"`

	// UploadTempStore enables Mongrel2's temp-file upload mode: a request
	// body larger than UploadThreshold (or of unknown length) is written to
	// a file made from this pattern (e.g. /tmp/upload.XXXXXX), and the
	// handler gets the x-mongrel2-upload-start and -done messages naming
	// it, as behind Mongrel2 (upload.temp_store). The file is removed when
	// the exchange is over. Default: off (bodies are sent inline, up to
	// MaxRequestBody).
	UploadTempStore string `json:"upload_temp_store,omitempty"`

	// UploadThreshold is the largest body sent inline when
	// UploadTempStore is set (Mongrel2's limits.content_length). Default:
	// 20480.
	UploadThreshold int64 `json:"upload_threshold,omitempty"`

	// MaxBufferedReply is how many bytes of reply frames may wait for a
	// slow client before the client is disconnected (Mongrel2 allows 16
	// queued frames). Default: 64 MiB.
	MaxBufferedReply int64 `json:"max_buffered_reply,omitempty"`

	// WebSocketMaxMessage bounds a WebSocket message from a client, all
	// its fragments together; past it the client gets close 1009.
	// Default: 16 MiB.
	WebSocketMaxMessage int64 `json:"websocket_max_message,omitempty"`

	// WebSocketPingInterval is how long a WebSocket client may stay quiet
	// before Caddy pings it. The ping goes between two of the worker's
	// frames, never inside one, and the client's pong stays with Caddy.
	// A negative value turns Caddy's pings off (workers may still ping).
	// Default: 30s.
	WebSocketPingInterval caddy.Duration `json:"websocket_ping_interval,omitempty"`

	// WebSocketIdleTimeout closes a WebSocket whose client has sent
	// nothing, pongs included, for this long, or has taken none of the
	// bytes written to it for this long: close 1001, or a TCP close if
	// the worker's last frame is half written. Must exceed
	// WebSocketPingInterval, so that a healthy quiet client is pinged
	// first. A negative value turns it off. Default: 60s.
	WebSocketIdleTimeout caddy.Duration `json:"websocket_idle_timeout,omitempty"`

	// MaxInflight bounds the requests in flight per pool (streams
	// included). Past it a request waits up to QueueTimeout for a slot,
	// then gets 503, so a flood cannot grow memory without bound. Default:
	// 10000.
	MaxInflight int `json:"max_inflight,omitempty"`

	// QueueTimeout is how long a request waits for an in-flight slot.
	// Default: 5s.
	QueueTimeout caddy.Duration `json:"queue_timeout,omitempty"`

	// DispatchTimeout is how long a request may wait to be started by a
	// worker. It applies only while every worker of the pool speaks the
	// control channel: such workers never start a request after its
	// deadline, so Caddy re-sends, safely for every method, what none took
	// (a worker killed with requests queued, or frozen). 0 uses the
	// default; negative turns it off. Default: 1s.
	DispatchTimeout caddy.Duration `json:"dispatch_timeout,omitempty"`

	// HungTimeout is how long a worker may hold a request without any of
	// its requests getting a first reply frame before it is considered
	// hung (alive, answering nothing): it is told to take no new requests
	// until it answers again, and its unanswered idempotent requests are
	// retried elsewhere (within Retries). The last worker still taking
	// requests is never paused. Needs the control channel; streams count
	// as answered at their first frame. Raise it for handlers that
	// legitimately say nothing for longer. 0 uses the default; negative
	// turns it off. Default: 1.5s.
	HungTimeout caddy.Duration `json:"hung_timeout,omitempty"`

	// Retries is how many times an idempotent request (GET, HEAD, OPTIONS,
	// TRACE, PUT, DELETE) is sent again when the worker that took it is
	// lost before its reply starts (control channel liveness). Other
	// methods get 502 at once. Default: 1; -1 disables retries (in the
	// Caddyfile, `retries 0` does too).
	Retries int `json:"retries,omitempty"`

	// Pattern is the value of the PATTERN header, the route a Mongrel2
	// handler believes matched. Default: "/".
	Pattern string `json:"pattern,omitempty"`

	// Curve turns on CurveZMQ (encryption and authentication) on every
	// socket of every pool but those marked plaintext: Caddy is the CURVE
	// server and only workers whose public key is allowed may connect.
	// See docs/security.md. Default: off (plaintext; binding a non-loopback
	// address then logs a warning).
	Curve *Curve `json:"curve,omitempty"`

	// Heartbeat is the ZMTP heartbeat interval on both sockets; a peer
	// silent for five intervals is dropped, so a dead or frozen worker
	// stops receiving requests. 0 uses the default; a negative value turns
	// heartbeats off. Default: 200ms.
	Heartbeat caddy.Duration `json:"heartbeat,omitempty"`

	headerFormat mongrel2.HeaderFormat
	windowHeader string
	hasControl   bool // some pool has a control channel
	pools        []*poolRuntime
	poolsByDial  map[string]*poolRuntime
	selector     reverseproxy.Selector
	logger       *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.zmq",
		New: func() caddy.Module { return new(Handler) },
	}
}

var senderIDPattern = regexp.MustCompile(`^[A-Za-z0-9-]+$`)

// Provision applies defaults and binds (or reuses) the sockets.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if len(h.Pools) > 0 && (h.RequestEndpoint != "" || h.ReplyEndpoint != "" || h.ControlEndpoint != "") {
		return fmt.Errorf("zmq: set either pools or the handler's own endpoints, not both")
	}
	if len(h.Pools) == 0 {
		if h.RequestEndpoint == "" {
			h.RequestEndpoint = DefaultRequestEndpoint
		}
		if h.ReplyEndpoint == "" {
			h.ReplyEndpoint = DefaultReplyEndpoint
		}
	}
	if len(h.Pools) == 0 {
		h.Pools = []Pool{{Name: "default", RequestEndpoint: h.RequestEndpoint, ReplyEndpoint: h.ReplyEndpoint, ControlEndpoint: h.ControlEndpoint}}
	}
	for i := range h.Pools {
		if h.Pools[i].Name == "" {
			h.Pools[i].Name = "pool" + strconv.Itoa(i)
		}
	}

	if h.ReplyTimeout == 0 {
		h.ReplyTimeout = caddy.Duration(DefaultReplyTimeout)
	}
	if h.MaxRequestBody == 0 {
		h.MaxRequestBody = DefaultMaxRequestBody
	}
	if h.UploadThreshold == 0 {
		h.UploadThreshold = DefaultUploadThreshold
	}
	if h.MaxBufferedReply == 0 {
		h.MaxBufferedReply = DefaultMaxBufferedReply
	}
	if h.WebSocketMaxMessage == 0 {
		h.WebSocketMaxMessage = DefaultWebSocketMaxMessage
	}
	if h.WebSocketPingInterval == 0 {
		h.WebSocketPingInterval = caddy.Duration(DefaultWebSocketPingInterval)
	}
	if h.WebSocketIdleTimeout == 0 {
		h.WebSocketIdleTimeout = caddy.Duration(DefaultWebSocketIdleTimeout)
	}
	if h.MaxInflight == 0 {
		h.MaxInflight = DefaultMaxInflight
	}
	if h.QueueTimeout == 0 {
		h.QueueTimeout = caddy.Duration(DefaultQueueTimeout)
	}
	if h.DispatchTimeout == 0 {
		h.DispatchTimeout = caddy.Duration(DefaultDispatchTimeout)
	}
	if h.HungTimeout == 0 {
		h.HungTimeout = caddy.Duration(DefaultHungTimeout)
	}
	if h.Retries == 0 {
		h.Retries = 1
	}
	if h.ReplyWindow == 0 {
		h.ReplyWindow = DefaultReplyWindow
	}
	h.windowHeader = strconv.FormatInt(h.ReplyWindow, 10)
	if h.Pattern == "" {
		h.Pattern = "/"
	}
	if h.Heartbeat == 0 {
		h.Heartbeat = caddy.Duration(DefaultHeartbeat)
	}
	var err error
	if h.headerFormat, err = mongrel2.ParseHeaderFormat(h.HeaderFormat); err != nil {
		return err
	}
	if err := h.Validate(); err != nil {
		return err
	}

	if h.SelectionPolicyRaw != nil {
		mod, err := ctx.LoadModule(h, "SelectionPolicyRaw")
		if err != nil {
			return fmt.Errorf("zmq: loading lb_policy: %w", err)
		}
		h.selector = mod.(reverseproxy.Selector)
	} else {
		h.selector = &reverseproxy.RandomSelection{}
	}

	h.poolsByDial = make(map[string]*poolRuntime, len(h.Pools))
	curve, err := h.provisionCurve(ctx)
	if err != nil {
		return err
	}
	for _, p := range h.Pools {
		cfg := transportConfig{
			requestEndpoint: p.RequestEndpoint,
			replyEndpoint:   p.ReplyEndpoint,
			connect:         p.connectSpec(),
			controlEndpoint: p.ControlEndpoint,
			sender:          h.senderFor(p),
			heartbeat:       max(time.Duration(h.Heartbeat), 0),
			maxReplyFrame:   max(h.MaxBufferedReply, h.ReplyWindow) + replyFrameSlack,
		}
		if curve != nil && !p.Plaintext {
			cfg.curveSecret = curve.kp.secret
		}
		key := cfg.key()
		// The logger of the first config that binds the sockets serves
		// them for their whole life.
		val, _, err := transports.LoadOrNew(key, func() (caddy.Destructor, error) {
			return newTransport(cfg, ctx.Logger().Named("transport"))
		})
		if err != nil {
			_ = h.Cleanup()
			h.pools = nil
			return fmt.Errorf("zmq: pool %s: %w", p.Name, err)
		}
		t := val.(*transport)
		if t.control != nil {
			t.control.hungAfter.Store(int64(max(time.Duration(h.HungTimeout), 0)))
		}
		if h.Affinity != nil {
			t.pins.mu.Lock()
			t.pins.ttl = h.Affinity.ttl()
			t.pins.mu.Unlock()
		}
		pr := &poolRuntime{Pool: p, transport: t, poolKey: key, upstream: &reverseproxy.Upstream{Dial: p.Name},
			slots: make(chan struct{}, h.MaxInflight), idle: make(chan struct{}, 1), sender: cfg.sender, nameValue: p.Name}
		h.pools = append(h.pools, pr)
		h.hasControl = h.hasControl || t.control != nil
		h.poolsByDial[p.Name] = pr
		// The sockets outlive this config: what is fixed in them cannot
		// change without new endpoints (or a restart).
		if t.cfg.sender != cfg.sender || t.cfg.controlEndpoint != cfg.controlEndpoint {
			_ = h.Cleanup()
			return fmt.Errorf("zmq: endpoints %s and %s are in use with another sender_id or control_endpoint; "+
				"changing those needs new endpoints or a restart", p.RequestEndpoint, p.ReplyEndpoint)
		}
		if err := h.attachCurve(t, cfg, curve, p); err != nil {
			_ = h.Cleanup()
			return err
		}
		if t.cfg.heartbeat != cfg.heartbeat {
			h.logger.Warn("heartbeat change takes effect when the endpoints are bound anew (restart)",
				zap.String("pool", p.Name))
		}
	}
	if err := h.provisionObservability(ctx); err != nil {
		_ = h.Cleanup()
		return err
	}
	return nil
}

// Validate checks the configuration.
func (h *Handler) Validate() error {
	if h.SenderID != "" && !senderIDPattern.MatchString(h.SenderID) {
		return fmt.Errorf("zmq: sender_id %q must match [A-Za-z0-9-]+", h.SenderID)
	}
	if err := h.validatePools(); err != nil {
		return err
	}
	if h.Curve != nil {
		if err := h.Curve.validate(); err != nil {
			return err
		}
	}
	if h.Affinity != nil {
		if err := h.Affinity.validate(); err != nil {
			return err
		}
		for _, p := range h.Pools {
			if p.ControlEndpoint == "" {
				return fmt.Errorf("zmq: affinity needs a control_endpoint on every pool (pool %s has none)", p.Name)
			}
		}
	}
	if err := h.validateBroadcast(); err != nil {
		return err
	}
	if h.ReplyWindow < minReplyWindow {
		return fmt.Errorf("zmq: reply_window must be at least %d bytes (one reply frame)", minReplyWindow)
	}

	if h.ReplyTimeout < 0 || h.StreamTimeout < 0 {
		return fmt.Errorf("zmq: timeouts must not be negative")
	}
	if h.MaxInflight < 0 || h.QueueTimeout < 0 {
		return fmt.Errorf("zmq: max_inflight and queue_timeout must not be negative")
	}
	if h.MaxRequestBody < 0 || h.MaxBufferedReply < 0 || h.WebSocketMaxMessage < 0 {
		return fmt.Errorf("zmq: size limits must not be negative")
	}
	if h.WebSocketPingInterval > 0 && h.WebSocketIdleTimeout > 0 && h.WebSocketIdleTimeout <= h.WebSocketPingInterval {
		return fmt.Errorf("zmq: websocket_idle_timeout (%v) must be longer than websocket_ping_interval (%v), or a quiet client is closed before it is pinged",
			time.Duration(h.WebSocketIdleTimeout), time.Duration(h.WebSocketPingInterval))
	}
	return nil
}

// Cleanup releases this config's hold on the sockets. They are closed only
// when no config uses them any more, so a reload keeps requests in flight.
func (h *Handler) Cleanup() error {
	// h.pools stays, and a pool is released only once this config's
	// requests on it are over: on a reload Caddy cleans up the old config
	// as soon as its servers start shutting down, while they still finish
	// their requests. If the new config dropped the pool, releasing it at
	// once would fail those requests. The wait is bounded by the longest a
	// request may legitimately wait for its reply to start.
	h.cleanupObservability()
	wait := time.Duration(h.ReplyTimeout) + time.Duration(h.QueueTimeout) + 5*time.Second
	for _, p := range h.pools {
		p.releaseWhenIdle(wait)
	}
	return nil
}

// senderFor is the sender UUID of pool p: the configured one, or one
// derived from the pool's own endpoints, so that adding or removing another
// pool by reload leaves it unchanged.
func (h *Handler) senderFor(p Pool) string {
	if h.SenderID != "" {
		return h.SenderID
	}
	return DefaultSenderID(p.RequestEndpoint+p.connectSpec(), p.ReplyEndpoint)
}

// DefaultSenderID derives a stable UUID from the host name and the
// endpoints: the same front end keeps it across restarts, and two hosts
// with the same config still get different ones.
func DefaultSenderID(requestEndpoint, replyEndpoint string) string {
	host, _ := os.Hostname()
	sum := sha256.Sum256([]byte("caddy-zmq\x00" + host + "\x00" + requestEndpoint + "\x00" + replyEndpoint))
	sum[6] = sum[6]&0x0f | 0x50 // version 5-style, name based
	sum[8] = sum[8]&0x3f | 0x80 // RFC 4122 variant
	h := hex.EncodeToString(sum[:16])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// Interface guards
var (
	_ caddy.Module                = (*Handler)(nil)
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
