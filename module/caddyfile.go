package caddyzmq

import (
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/dustin/go-humanize"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("zmq", parseCaddyfile)
	// zmq is a terminal handler like reverse_proxy and belongs next to it.
	httpcaddyfile.RegisterDirectiveOrder("zmq", httpcaddyfile.After, "reverse_proxy")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	var handler Handler
	err := handler.UnmarshalCaddyfile(h.Dispenser)
	return &handler, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	zmq [<request_endpoint> <reply_endpoint>] {
//	    request_endpoint   <endpoint>       # Caddy binds PUSH here (Mongrel2 send_spec)
//	    reply_endpoint     <endpoint>       # Caddy binds SUB here (Mongrel2 recv_spec)
//	    control_endpoint   <endpoint>       # Caddy binds ROUTER here (zmqx/1 extension)
//	    sender_id          <uuid>           # Mongrel2 send_ident
//	    header_format      json|tnetstring
//	    reply_timeout      <duration>       # 504 past it
//	    stream_timeout     <duration>
//	    max_request_body   <size>           # 413 past it, e.g. 10MB
//	    max_buffered_reply <size>
//	    websocket_max_message <size>        # close 1009 past it (default 16MiB)
//	    websocket_ping_interval <duration>|off  # ping a quiet client (default 30s)
//	    websocket_idle_timeout  <duration>|off  # close a silent client (default 60s)
//	    upload_temp_store  <pattern>        # Mongrel2 temp-file uploads, e.g. /tmp/upload.XXXXXX
//	    upload_threshold   <size>           # bodies above it go through the file (default 20480)
//	    reply_window       <size>           # credit per request on the control channel
//	    pattern            <path>
//	    max_inflight       <n>              # per pool; past it wait queue_timeout, then 503
//	    queue_timeout      <duration>
//	    dispatch_timeout   <duration>|off   # re-send what no zmqx worker started by then
//	    hung_timeout       <duration>|off   # pause a zmqx worker that answers nothing for this long
//	    affinity           cookie|header <name> [<ttl>]   # pin sessions to one worker
//	    broadcast          [<timeout> [<max_answer bytes>]]  # ask every live worker (NDJSON)
//	    retries            <n>              # idempotent requests whose worker was lost
//	    heartbeat          <duration>|off
//	    curve {                             # CurveZMQ on every socket (docs/security.md)
//	        secret_key      <z85>           # or secret_key_file; default: generated, kept in Caddy's storage
//	        secret_key_file <path>
//	        allow           <z85>...        # allowed worker public keys (repeatable)
//	        allow_dir       <dir>           # or every *.key zcert file in a directory
//	    }
//
//	    # several pools instead of the endpoints above, picked per request
//	    # with reverse_proxy's selection policies
//	    pool [<name>] [<request_endpoint> <reply_endpoint> [<control_endpoint>]] {
//	        request_endpoint <endpoint>
//	        reply_endpoint   <endpoint>
//	        control_endpoint <endpoint>
//	        # or: workers bind, Caddy connects (one line per worker)
//	        to <worker_request_endpoint> <worker_reply_endpoint>
//	        plaintext        # no CURVE on this pool (plain Mongrel2 handlers)
//	    }
//	    lb_policy <name> [<options...>]
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	args := d.RemainingArgs()
	switch len(args) {
	case 0:
	case 2:
		h.RequestEndpoint, h.ReplyEndpoint = args[0], args[1]
	default:
		return d.Errf("expected zero or two endpoints (request, reply), got %d", len(args))
	}
	for d.NextBlock(0) {
		name := d.Val()
		switch name {
		case "request_endpoint", "reply_endpoint", "control_endpoint", "sender_id", "header_format", "pattern", "upload_temp_store":
			if !d.NextArg() {
				return d.ArgErr()
			}
			v := d.Val()
			switch name {
			case "request_endpoint":
				h.RequestEndpoint = v
			case "reply_endpoint":
				h.ReplyEndpoint = v
			case "control_endpoint":
				h.ControlEndpoint = v
			case "sender_id":
				h.SenderID = v
			case "header_format":
				if v != "json" && v != "tnetstring" {
					return d.Errf("header_format must be json or tnetstring, not %q", v)
				}
				h.HeaderFormat = v
			case "pattern":
				h.Pattern = v
			case "upload_temp_store":
				h.UploadTempStore = v
			}
		case "reply_timeout", "stream_timeout", "heartbeat", "queue_timeout", "dispatch_timeout", "hung_timeout",
			"websocket_ping_interval", "websocket_idle_timeout":
			if !d.NextArg() {
				return d.ArgErr()
			}
			var dur time.Duration
			if offAllowed[name] && d.Val() == "off" {
				dur = -1
			} else {
				var err error
				if dur, err = caddy.ParseDuration(d.Val()); err != nil {
					return d.Errf("bad %s %q: %v", name, d.Val(), err)
				}
			}
			switch name {
			case "reply_timeout":
				h.ReplyTimeout = caddy.Duration(dur)
			case "stream_timeout":
				h.StreamTimeout = caddy.Duration(dur)
			case "heartbeat":
				h.Heartbeat = caddy.Duration(dur)
			case "queue_timeout":
				h.QueueTimeout = caddy.Duration(dur)
			case "dispatch_timeout":
				h.DispatchTimeout = caddy.Duration(dur)
			case "hung_timeout":
				h.HungTimeout = caddy.Duration(dur)
			case "websocket_ping_interval":
				h.WebSocketPingInterval = caddy.Duration(dur)
			case "websocket_idle_timeout":
				h.WebSocketIdleTimeout = caddy.Duration(dur)
			}
		case "max_request_body", "max_buffered_reply", "reply_window", "upload_threshold", "websocket_max_message":
			if !d.NextArg() {
				return d.ArgErr()
			}
			size, err := parseSize(d.Val())
			if err != nil {
				return d.Errf("bad %s %q: %v", name, d.Val(), err)
			}
			switch name {
			case "max_request_body":
				h.MaxRequestBody = size
			case "max_buffered_reply":
				h.MaxBufferedReply = size
			case "reply_window":
				h.ReplyWindow = size
			case "upload_threshold":
				h.UploadThreshold = size
			case "websocket_max_message":
				h.WebSocketMaxMessage = size
			}
		case "max_inflight":
			if !d.NextArg() {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(d.Val())
			if err != nil || n < 1 {
				return d.Errf("bad max_inflight %q", d.Val())
			}
			h.MaxInflight = n
		case "affinity":
			args := d.RemainingArgs()
			if len(args) < 2 || len(args) > 3 {
				return d.Errf("affinity: expected cookie|header <name> [<ttl>]")
			}
			h.Affinity = &Affinity{Source: args[0], Name: args[1]}
			if len(args) == 3 {
				ttl, err := caddy.ParseDuration(args[2])
				if err != nil {
					return d.Errf("bad affinity ttl %q: %v", args[2], err)
				}
				h.Affinity.TTL = caddy.Duration(ttl)
			}
			if err := h.Affinity.validate(); err != nil {
				return d.Err(err.Error())
			}
			continue
		case "broadcast":
			if err := h.unmarshalBroadcast(d); err != nil {
				return err
			}
			continue
		case "retries":
			if !d.NextArg() {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(d.Val())
			if err != nil || n < -1 {
				return d.Errf("bad retries %q", d.Val())
			}
			if n == 0 {
				// In JSON 0 is the unset field (the default); written
				// out, "retries 0" can only mean none.
				n = -1
			}
			h.Retries = n
		case "curve":
			h.Curve = new(Curve)
			if err := h.Curve.UnmarshalCaddyfile(d); err != nil {
				return err
			}
			continue
		case "pool":
			p, err := unmarshalPool(d)
			if err != nil {
				return err
			}
			h.Pools = append(h.Pools, p)
			continue
		case "lb_policy":
			if h.SelectionPolicyRaw != nil {
				return d.Err("lb_policy already specified")
			}
			if !d.NextArg() {
				return d.ArgErr()
			}
			policy := d.Val()
			unm, err := caddyfile.UnmarshalModule(d, "http.reverse_proxy.selection_policies."+policy)
			if err != nil {
				return err
			}
			sel, ok := unm.(reverseproxy.Selector)
			if !ok {
				return d.Errf("module %s is not a selection policy", policy)
			}
			h.SelectionPolicyRaw = caddyconfig.JSONModuleObject(sel, "policy", policy, nil)
			continue
		default:
			return d.Errf("unknown zmq option %q", name)
		}
		if d.NextArg() {
			return d.Errf("%s takes one argument", name)
		}
	}
	return nil
}

// unmarshalPool parses
//
//	pool [<name>] [<request_endpoint> <reply_endpoint> [<control_endpoint>]] {
//	    request_endpoint <endpoint>
//	    reply_endpoint   <endpoint>
//	    control_endpoint <endpoint>
//	    to <worker_request_endpoint> <worker_reply_endpoint>   # repeatable
//	}
func unmarshalPool(d *caddyfile.Dispenser) (Pool, error) {
	var p Pool
	args := d.RemainingArgs()
	switch len(args) {
	case 0:
	case 1:
		p.Name = args[0]
	case 3, 4:
		p.Name, p.RequestEndpoint, p.ReplyEndpoint = args[0], args[1], args[2]
		if len(args) == 4 {
			p.ControlEndpoint = args[3]
		}
	default:
		return p, d.Errf("pool: expected [<name> [<request_endpoint> <reply_endpoint> [<control_endpoint>]]], got %d arguments", len(args))
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if opt == "plaintext" {
			p.Plaintext = true
			if d.NextArg() {
				return p, d.Errf("plaintext takes no argument")
			}
			continue
		}
		if !d.NextArg() {
			return p, d.ArgErr()
		}
		switch opt {
		case "request_endpoint":
			p.RequestEndpoint = d.Val()
		case "reply_endpoint":
			p.ReplyEndpoint = d.Val()
		case "control_endpoint":
			p.ControlEndpoint = d.Val()
		case "to":
			req := d.Val()
			if !d.NextArg() {
				return p, d.Errf("to: expected <worker_request_endpoint> <worker_reply_endpoint>")
			}
			p.Workers = append(p.Workers, WorkerEndpoints{RequestEndpoint: req, ReplyEndpoint: d.Val()})
		default:
			return p, d.Errf("unknown pool option %q", opt)
		}
		if d.NextArg() {
			return p, d.Errf("%s takes one argument", opt)
		}
	}
	return p, nil
}

func parseSize(s string) (int64, error) {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return n, nil
	}
	n, err := humanize.ParseBytes(s)
	if err != nil {
		return 0, err
	}
	return int64(n), nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)

// offAllowed lists the duration options that take "off" (stored as -1).
var offAllowed = map[string]bool{
	"heartbeat": true, "dispatch_timeout": true, "hung_timeout": true,
	"websocket_ping_interval": true, "websocket_idle_timeout": true,
}
