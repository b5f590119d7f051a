package caddyzmq

import (
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
)

// provisioned lists the handlers of the configs that are running, so that
// what Caddy builds apart from them (the admin routes, the metrics
// collector, the events forwarder) finds their pools. Caddy's admin modules
// and collectors cannot reach handler instances; this is the state its
// reload model needs, nothing more: a handler is added when it is
// provisioned and removed when its config is cleaned up, so after a reload
// only the new config's pools are listed.
var provisioned handlerRegistry

type handlerRegistry struct {
	mu       sync.RWMutex
	handlers []*Handler // in the order they were provisioned
}

func (r *handlerRegistry) add(h *Handler) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.handlers = append(r.handlers, h)
}

// remove drops h and reports the pool names no remaining handler uses.
func (r *handlerRegistry) remove(h *Handler) (gone []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	i := slices.Index(r.handlers, h)
	if i < 0 {
		return nil
	}
	r.handlers = slices.Delete(r.handlers, i, i+1)
	for _, p := range h.pools {
		if !r.usesPoolLocked(p.Name) {
			gone = append(gone, p.Name)
		}
	}
	return gone
}

func (r *handlerRegistry) usesPoolLocked(name string) bool {
	for _, h := range r.handlers {
		for _, p := range h.pools {
			if p.Name == name {
				return true
			}
		}
	}
	return false
}

// poolGroup is what the operator sees as one pool: every provisioned pool
// of that name (during a reload the old and the new config both have it),
// and the distinct transports behind them (usually one: a reload that
// keeps the endpoints keeps the sockets).
type poolGroup struct {
	name       string
	runtimes   []*poolRuntime
	transports []*transport
}

// pools groups the provisioned pools by name, newest config first, names
// in the order they were first seen.
func (r *handlerRegistry) pools() []*poolGroup {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var groups []*poolGroup
	byName := map[string]*poolGroup{}
	for i := len(r.handlers) - 1; i >= 0; i-- {
		for _, p := range r.handlers[i].pools {
			g := byName[p.Name]
			if g == nil {
				g = &poolGroup{name: p.Name}
				byName[p.Name] = g
				groups = append(groups, g)
			}
			g.runtimes = append(g.runtimes, p)
			if !slices.Contains(g.transports, p.transport) {
				g.transports = append(g.transports, p.transport)
			}
		}
	}
	return groups
}

// poolNameOf is the name the newest config gives the pool on t.
func (r *handlerRegistry) poolNameOf(t *transport) (string, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for i := len(r.handlers) - 1; i >= 0; i-- {
		for _, p := range r.handlers[i].pools {
			if p.transport == t {
				return p.Name, true
			}
		}
	}
	return "", false
}

// provisionObservability makes h's pools visible: metrics registered in the
// config's registry, counters resolved per pool, h listed for the admin
// API, and events forwarded while the config runs.
func (h *Handler) provisionObservability(ctx caddy.Context) error {
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("zmq: registering metrics: %w", err)
	}
	for _, p := range h.pools {
		p.obs = newPoolObs(p.Name)
	}
	// Events go to the events app only when the config has one: its
	// subscribers are configured there (reverse_proxy loads one either
	// way; without subscribers it would only drop them).
	app, err := ctx.AppIfConfigured("events")
	if err != nil && !errors.Is(err, caddy.ErrNotConfigured) {
		return fmt.Errorf("zmq: loading the events app: %w", err)
	}
	provisioned.add(h)
	if app != nil {
		go forwardEvents(ctx, app.(*caddyevents.App), h.logger.Named("events"))
	}
	return nil
}

// cleanupObservability unlists h; the series of pools no config has any
// more go with it.
func (h *Handler) cleanupObservability() {
	forgetPoolMetrics(provisioned.remove(h))
}
