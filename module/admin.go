package caddyzmq

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// adminAPI is the admin endpoint's view of the zmq pools (`admin.api.zmq`):
//
//	GET  /zmq/pools                                  every pool and its workers
//	GET  /zmq/pools/<pool>                           one pool
//	POST /zmq/pools/<pool>/workers/<worker>/drain    it finishes what it holds, takes nothing new (?force=1: even the last one)
//	POST /zmq/pools/<pool>/workers/<worker>/resume   undoes drain
//
// Pool names and worker ids are path segments, escaped as such. Errors are
// Caddy's admin errors: JSON {"error": "..."} with the status.
type adminAPI struct{}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.zmq",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Routes implements caddy.AdminRouter.
func (a adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: adminPrefix, Handler: caddy.AdminHandlerFunc(a.serve)}}
}

const adminPrefix = "/zmq/"

// PoolView is one pool as GET /zmq/pools shows it.
type PoolView struct {
	Name            string            `json:"name"`
	RequestEndpoint string            `json:"request_endpoint,omitempty"`
	ReplyEndpoint   string            `json:"reply_endpoint,omitempty"`
	ControlEndpoint string            `json:"control_endpoint,omitempty"`
	WorkerEndpoints []WorkerEndpoints `json:"worker_endpoints,omitempty"`
	// Connections are the ZMTP connections to the request socket, every
	// worker's, Mongrel2 handlers included.
	Connections int64 `json:"connections"`
	// PlainConnections are those of workers without the control channel
	// (Mongrel2 handlers): the front end knows no more of them.
	PlainConnections int64 `json:"plain_connections"`
	// RequestPeers are those connections with their peers' addresses
	// (ip:port, read from the connection when it arrives), oldest first:
	// plain handlers and the control channel's workers alike (nothing
	// links a worker to the connection its requests come through).
	RequestPeers []ConnView   `json:"request_peers"`
	InFlight     int          `json:"in_flight"`
	Waiting      int64        `json:"waiting"`
	MaxInflight  int          `json:"max_inflight"`
	Workers      []WorkerView `json:"workers"`
}

// WorkerView is one worker of the control channel.
type WorkerView struct {
	ID string `json:"id"`
	// RemoteAddr is the address the worker's control connection comes
	// from, read when its HELLO arrives: ip:port for tcp ([ip]:port for
	// IPv6), libzmq's "Peer-Address" for ipc (localhost:uid:gid:pid).
	// Empty until the worker's HELLO.
	RemoteAddr string `json:"remote_addr,omitempty"`
	// State is live, paused (hung), draining (by an operator, or the
	// worker is leaving) or lost (shown for a minute).
	State    string `json:"state"`
	Hung     bool   `json:"hung,omitempty"`
	InFlight int    `json:"in_flight"`
	// MaxConcurrency is what the worker announced (HELLO), 0 if unknown.
	MaxConcurrency int       `json:"max_concurrency"`
	LastHeard      time.Time `json:"last_heard"`
	// AffinitySessions counts the sessions the handler's affinity
	// (cookie or header) has pinned to this worker in the front end's
	// table, idle ones until their TTL; a session whose worker is gone
	// stays counted here until its next request moves it. Not workerkit's
	// thread-pinned sessions (PinnedSessions), which only the worker knows.
	AffinitySessions int       `json:"affinity_sessions"`
	Since            time.Time `json:"since"`
	Joined           time.Time `json:"joined,omitzero"`
}

func (a adminAPI) serve(w http.ResponseWriter, r *http.Request) error {
	parts, err := pathSegments(strings.TrimPrefix(r.URL.EscapedPath(), adminPrefix))
	if err != nil {
		return apiError(http.StatusBadRequest, err)
	}
	switch {
	case len(parts) == 1 && parts[0] == "pools":
		if err := onlyMethod(r, http.MethodGet); err != nil {
			return err
		}
		return writeJSON(w, poolViews(""))
	case len(parts) == 2 && parts[0] == "pools":
		if err := onlyMethod(r, http.MethodGet); err != nil {
			return err
		}
		views := poolViews(parts[1])
		if len(views) == 0 {
			return apiError(http.StatusNotFound, fmt.Errorf("no pool named %q", parts[1]))
		}
		return writeJSON(w, views[0])
	case len(parts) == 5 && parts[0] == "pools" && parts[2] == "workers" && (parts[4] == "drain" || parts[4] == "resume"):
		if err := onlyMethod(r, http.MethodPost); err != nil {
			return err
		}
		return steer(w, r, parts[1], parts[3], parts[4])
	}
	return apiError(http.StatusNotFound, fmt.Errorf("no zmq admin route %s", r.URL.Path))
}

// steer drains or resumes a worker and answers with its pool's view.
func steer(w http.ResponseWriter, r *http.Request, pool, worker, action string) error {
	c, err := controlOf(pool)
	if err != nil {
		return err
	}
	if action == "drain" {
		err = c.drain(worker, r.URL.Query().Get("force") == "1" || r.URL.Query().Get("force") == "true")
	} else {
		err = c.resume(worker)
	}
	switch {
	case errors.Is(err, errUnknownWorker):
		return apiError(http.StatusNotFound, fmt.Errorf("pool %s: worker %q: %w", pool, worker, err))
	case errors.Is(err, errLastWorker):
		return apiError(http.StatusConflict, fmt.Errorf("pool %s: worker %q: %w", pool, worker, err))
	case err != nil:
		return apiError(http.StatusInternalServerError, err)
	}
	views := poolViews(pool)
	if len(views) == 0 { // reloaded away meanwhile
		return apiError(http.StatusNotFound, fmt.Errorf("no pool named %q", pool))
	}
	return writeJSON(w, views[0])
}

// controlOf is the control plane of the newest pool named name.
func controlOf(name string) (*controlPlane, error) {
	for _, g := range provisioned.pools() {
		if g.name != name {
			continue
		}
		c := g.runtimes[0].transport.control
		if c == nil {
			return nil, apiError(http.StatusConflict, fmt.Errorf("pool %s: %w", name, errNoControl))
		}
		return c, nil
	}
	return nil, apiError(http.StatusNotFound, fmt.Errorf("no pool named %q", name))
}

// poolViews describes the provisioned pools (only the one named only, if
// set), each as its newest config has it.
func poolViews(only string) []PoolView {
	views := []PoolView{}
	for _, g := range provisioned.pools() {
		if only != "" && g.name != only {
			continue
		}
		p := g.runtimes[0]
		v := PoolView{
			Name:            g.name,
			RequestEndpoint: p.RequestEndpoint,
			ReplyEndpoint:   p.ReplyEndpoint,
			ControlEndpoint: p.ControlEndpoint,
			WorkerEndpoints: p.Workers,
			Connections:     p.transport.conns.Load(),
			RequestPeers:    p.transport.reqConns.list(),
			MaxInflight:     cap(p.slots),
			Workers:         []WorkerView{},
		}
		for _, q := range g.runtimes {
			v.InFlight += len(q.slots)
			v.Waiting += q.metrics().waiting.Load()
		}
		v.PlainConnections = v.Connections
		if c := p.transport.control; c != nil {
			v.Workers = c.workerViews()
			v.PlainConnections = c.plainConnections()
		}
		views = append(views, v)
	}
	return views
}

// workerViews lists c's workers, those lost lately included, by id.
func (c *controlPlane) workerViews() []WorkerView {
	inFlight := c.t.inFlightByWorker()
	pinned := c.t.pins.countByWorker() // affinity
	now := time.Now()
	var views []WorkerView
	c.mu.Lock()
	for id, wi := range c.workers {
		st, since := wi.state()
		views = append(views, WorkerView{
			ID: id, RemoteAddr: wi.remoteAddr, State: st, Hung: wi.hung, InFlight: inFlight[wi],
			MaxConcurrency: wi.maxConcurrent, LastHeard: wi.lastSeen,
			AffinitySessions: pinned[id], Since: since, Joined: wi.joinedAt,
		})
	}
	for id, g := range c.gone {
		if _, back := c.workers[id]; back || now.Sub(g.at) > lostShownFor {
			continue
		}
		views = append(views, WorkerView{
			ID: id, RemoteAddr: g.remoteAddr, State: stateLost, MaxConcurrency: g.maxConcurrent,
			LastHeard: g.lastHeard, AffinitySessions: pinned[id], Since: g.at,
		})
	}
	c.mu.Unlock()
	slices.SortFunc(views, func(a, b WorkerView) int { return strings.Compare(a.ID, b.ID) })
	return views
}

// inFlightByWorker counts the pending requests each worker acknowledged.
func (t *transport) inFlightByWorker() map[*workerInfo]int {
	n := map[*workerInfo]int{}
	t.mu.RLock()
	defer t.mu.RUnlock()
	for _, ex := range t.pending {
		ex.mu.Lock()
		if ex.wi != nil && ex.err == nil {
			n[ex.wi]++
		}
		ex.mu.Unlock()
	}
	return n
}

// countByWorker counts the sessions pinned to each worker, those idle past
// the TTL (forgotten at their next request) left out.
func (p *pinTable) countByWorker() map[string]int {
	n := map[string]int{}
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range p.items {
		if pn := e.Value.(*pin); now.Sub(pn.used) <= p.ttl {
			n[pn.worker]++
		}
	}
	return n
}

func pathSegments(escaped string) ([]string, error) {
	escaped = strings.TrimSuffix(escaped, "/")
	if escaped == "" {
		return nil, nil
	}
	parts := strings.Split(escaped, "/")
	for i, s := range parts {
		u, err := url.PathUnescape(s)
		if err != nil {
			return nil, fmt.Errorf("bad path segment %q: %w", s, err)
		}
		parts[i] = u
	}
	return parts, nil
}

func onlyMethod(r *http.Request, method string) error {
	if r.Method != method {
		return apiError(http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed, use %s", r.Method, method))
	}
	return nil
}

func apiError(status int, err error) error {
	var ae caddy.APIError
	if errors.As(err, &ae) {
		return ae
	}
	return caddy.APIError{HTTPStatus: status, Err: err}
}

func writeJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(v); err != nil {
		return apiError(http.StatusInternalServerError, err)
	}
	return nil
}

// Interface guards
var (
	_ caddy.Module      = (*adminAPI)(nil)
	_ caddy.AdminRouter = (*adminAPI)(nil)
)
