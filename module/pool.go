package caddyzmq

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// Pool is one set of workers behind its own sockets. A handler with several
// pools picks one per request with Caddy's reverse_proxy selection policies
// (lb_policy); workers of a pool share its endpoints, and PUSH balances
// between them.
type Pool struct {
	// Name identifies the pool to the selection policy: the cookie policy
	// pins a client to it, ip_hash maps clients onto it. Default: pool0,
	// pool1, ... in order.
	Name string `json:"name,omitempty"`

	// RequestEndpoint is where Caddy binds this pool's PUSH socket.
	// Required.
	RequestEndpoint string `json:"request_endpoint,omitempty"`

	// ReplyEndpoint is where Caddy binds this pool's SUB socket. Required.
	ReplyEndpoint string `json:"reply_endpoint,omitempty"`

	// ControlEndpoint is where Caddy binds this pool's control-channel
	// ROUTER (see Handler.ControlEndpoint). Default: off.
	ControlEndpoint string `json:"control_endpoint,omitempty"`

	// Workers turns the topology around, reverse_proxy style: each worker
	// BINDS its own request (PULL) and reply (PUB) endpoints and Caddy
	// CONNECTs to all of them; PUSH balances across the connected ones.
	// When set, RequestEndpoint and ReplyEndpoint must be empty. Adding or
	// removing a worker is a config reload. Default: none (workers connect).
	Workers []WorkerEndpoints `json:"workers,omitempty"`

	// Plaintext exempts this pool from the handler's curve settings, for
	// plain Mongrel2 handlers that cannot speak CURVE. Default: false.
	Plaintext bool `json:"plaintext,omitempty"`
}

// WorkerEndpoints are the endpoints one binding worker listens on.
type WorkerEndpoints struct {
	// RequestEndpoint is where the worker binds its PULL socket.
	RequestEndpoint string `json:"request_endpoint"`
	// ReplyEndpoint is where the worker binds its PUB socket.
	ReplyEndpoint string `json:"reply_endpoint"`
}

// connectSpec flattens Workers for transportConfig.
func (p Pool) connectSpec() string {
	parts := make([]string, len(p.Workers))
	for i, w := range p.Workers {
		parts[i] = w.RequestEndpoint + " " + w.ReplyEndpoint
	}
	return strings.Join(parts, ";")
}

// poolRuntime is a provisioned pool.
type poolRuntime struct {
	Pool
	transport *transport
	poolKey   string
	upstream  *reverseproxy.Upstream
	// slots holds one token per request in flight (max_inflight).
	slots chan struct{}
	// sender is this pool's UUID (Handler.SenderID or derived).
	sender string
	// nameValue is Name as the value of the {http.zmq.pool} placeholder,
	// boxed once rather than per request.
	nameValue any
	// idle is signalled each time the last of this config's requests in
	// flight gives its slot back, so that Cleanup can let them finish
	// before the sockets are released. Not a sync.WaitGroup: a request of
	// this config may take a slot again after none was in flight (a
	// re-send after Cleanup began), which a WaitGroup being waited on
	// forbids (it panics: "WaitGroup is reused before previous Wait has
	// returned").
	idle chan struct{} // buffered, 1
	// obs is what this pool's requests count into (metrics.go).
	obs *poolObs
}

// releaseWhenIdle drops this config's hold on the pool's sockets once its
// requests are over (at once when there are none), waiting at most max.
func (p *poolRuntime) releaseWhenIdle(max time.Duration) {
	if len(p.slots) == 0 {
		_, _ = transports.Delete(p.poolKey)
		return
	}
	go func() {
		p.awaitIdle(max)
		_, _ = transports.Delete(p.poolKey)
	}()
}

// awaitIdle waits until none of this config's requests is in flight, at
// most max.
func (p *poolRuntime) awaitIdle(max time.Duration) {
	timer := time.NewTimer(max)
	defer timer.Stop()
	for len(p.slots) > 0 {
		select {
		case <-p.idle:
		case <-timer.C:
			return
		}
	}
}

var errBusy = errors.New("max_inflight requests are in flight and none finished within queue_timeout")

// acquire takes an in-flight slot, waiting up to wait.
func (p *poolRuntime) acquire(r *http.Request, wait time.Duration) error {
	select {
	case p.slots <- struct{}{}:
		return nil
	default:
	}
	defer p.metrics().waitForSlot()()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case p.slots <- struct{}{}:
		return nil
	case <-timer.C:
		return errBusy
	case <-r.Context().Done():
		return r.Context().Err()
	}
}

func (p *poolRuntime) release() {
	<-p.slots
	if len(p.slots) == 0 {
		select {
		case p.idle <- struct{}{}:
		default: // one signal pending is enough: the waiter reads the count
		}
	}
}

// live reports whether a worker is connected to the pool's request socket.
func (p *poolRuntime) live() bool { return p.transport.peers.Load() > 0 }

// selectPool picks a live pool that has not been tried yet, with the
// configured selection policy. It returns nil when none is left.
func (h *Handler) selectPool(r *http.Request, w http.ResponseWriter, tried uint64) *poolRuntime {
	if len(h.pools) == 1 {
		if tried != 0 {
			return nil
		}
		// A lone pool is tried even with no peer counted: the send itself
		// answers 503 at once when nobody is there.
		return h.pools[0]
	}
	var buf [16]*reverseproxy.Upstream
	candidates := reverseproxy.UpstreamPool(buf[:0])
	for i, p := range h.pools {
		if tried&(1<<i) == 0 && p.live() {
			candidates = append(candidates, p.upstream)
		}
	}
	if len(candidates) == 0 {
		return nil
	}
	chosen := h.selector.Select(candidates, r, w)
	if chosen == nil {
		return nil
	}
	return h.poolsByDial[chosen.Dial]
}

// maxPools keeps the tried-set a bitmask.
const maxPools = 64

func (h *Handler) validatePools() error {
	if len(h.Pools) > maxPools {
		return fmt.Errorf("zmq: at most %d pools", maxPools)
	}
	seen := map[string]bool{}
	for i, p := range h.Pools {
		if seen[p.Name] {
			return fmt.Errorf("zmq: duplicate pool name %q", p.Name)
		}
		if len(p.Workers) > 0 {
			seen[p.Name] = true
			if p.RequestEndpoint != "" || p.ReplyEndpoint != "" || p.ControlEndpoint != "" {
				return fmt.Errorf("zmq: pool %s: set either workers (Caddy connects) or endpoints (Caddy binds), not both", p.Name)
			}
			for _, w := range p.Workers {
				if w.RequestEndpoint == "" || w.ReplyEndpoint == "" || strings.ContainsAny(w.RequestEndpoint+w.ReplyEndpoint, " ;") {
					return fmt.Errorf("zmq: pool %s: each worker needs a request and a reply endpoint", p.Name)
				}
			}
			continue
		}
		if p.RequestEndpoint == "" || p.ReplyEndpoint == "" {
			return fmt.Errorf("zmq: pool %d (%s) needs request_endpoint and reply_endpoint", i, p.Name)
		}
		if seen[p.Name] {
			return fmt.Errorf("zmq: duplicate pool name %q", p.Name)
		}
		seen[p.Name] = true
		for _, ep := range []string{p.RequestEndpoint, p.ReplyEndpoint, p.ControlEndpoint} {
			if ep != "" && seen["ep:"+ep] {
				return fmt.Errorf("zmq: endpoint %s used twice", ep)
			}
			seen["ep:"+ep] = ep != ""
		}
	}
	return nil
}
