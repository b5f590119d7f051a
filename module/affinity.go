package caddyzmq

import (
	"container/list"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// Affinity pins every request of one session to the one worker process
// that served its first request, while that worker lives. The session is
// named by a cookie or a header the application already uses. It needs the
// control channel: requests for a pinned session are addressed to the
// worker by its identity over the ROUTER socket ("REQ <frame>") instead of
// being PUSHed. Workers that do not speak the control channel (Mongrel2
// handlers) are pinned per pool only, with lb_policy cookie.
type Affinity struct {
	// Source is "cookie" or "header".
	Source string `json:"source"`
	// Name is the cookie or header that names the session.
	Name string `json:"name"`
	// TTL is how long an idle session stays pinned, a duration like any
	// other of Caddy's (e.g. 30m, 1d). Default: 1h.
	TTL caddy.Duration `json:"ttl,omitempty"`
}

// maxPinnedSessions bounds the pin table; the least recently used session
// is forgotten first (its next request is balanced and pinned anew).
const maxPinnedSessions = 100000

const defaultAffinityTTL = time.Hour

// errAddresseeGone fails a request addressed to one worker (affinity pin,
// WebSocket, broadcast target) that the control socket could not route to
// it: the worker has gone, and nothing was delivered.
var errAddresseeGone = errors.New("the worker the request was addressed to is gone")

// errReqNotQueued fails a request addressed to a live worker whose control
// queues were full: nothing was sent, the worker stays pinned, and the
// request is answered as by a pool whose queues are full (errQueueFull).
var errReqNotQueued = fmt.Errorf("%w: the control channel to the worker it was addressed to is full", errQueueFull)

func (a *Affinity) validate() error {
	if a.Source != "cookie" && a.Source != "header" {
		return fmt.Errorf("zmq: affinity source must be cookie or header, not %q", a.Source)
	}
	if a.Name == "" {
		return fmt.Errorf("zmq: affinity needs a cookie or header name")
	}
	if a.TTL < 0 {
		return fmt.Errorf("zmq: affinity ttl must not be negative, got %s", time.Duration(a.TTL))
	}
	return nil
}

// ttl is how long an idle session stays pinned.
func (a *Affinity) ttl() time.Duration {
	if a.TTL > 0 {
		return time.Duration(a.TTL)
	}
	return defaultAffinityTTL
}

// sessionKey extracts the session name from r, or "".
func (a *Affinity) sessionKey(r *http.Request) string {
	if a.Source == "header" {
		return r.Header.Get(a.Name)
	}
	c, err := r.Cookie(a.Name)
	if err != nil {
		return ""
	}
	return c.Value
}

// pinTable maps sessions to worker identities, LRU-bounded with a TTL.
type pinTable struct {
	mu    sync.Mutex
	ttl   time.Duration
	items map[string]*list.Element
	order *list.List // front = most recent
	// pending: sessions whose first request was sent, balanced, and whose
	// ACK (which names the worker to pin) has not arrived yet. A second
	// request of the session waits briefly for it instead of being
	// balanced elsewhere. The channel closes when the session is pinned.
	pending map[string]chan struct{}
	// awaiting: finished exchanges whose ACK had not arrived yet (ACK and
	// reply travel on different sockets, so the reply may win).
	awaiting map[uint64]awaitPin
}

type awaitPin struct {
	session string
	at      time.Time
}

// pendingWait bounds how long a request waits for its session's pin.
const pendingWait = 250 * time.Millisecond

// claim marks session as being pinned by the caller's request and returns
// nil, or returns the channel to wait on when another request got there
// first.
func (p *pinTable) claim(session string) <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ch, ok := p.pending[session]; ok {
		return ch
	}
	if p.pending == nil {
		p.pending = map[string]chan struct{}{}
	}
	p.pending[session] = make(chan struct{})
	return nil
}

// unclaim ends a claim that produced no pin (no ACK ever came).
func (p *pinTable) unclaim(session string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ch, ok := p.pending[session]; ok {
		close(ch)
		delete(p.pending, session)
	}
}

// pinFirst pins session to worker unless it is pinned to a worker that
// still lives: the first ACK of a session wins.
func (p *pinTable) pinFirst(session, worker string, live func(string) bool) {
	if cur := p.get(session); cur != "" && cur != worker && live(cur) {
		p.unclaim(session)
		return
	}
	p.set(session, worker)
	p.unclaim(session)
}

func (p *pinTable) awaitAck(id uint64, session string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.awaiting == nil {
		p.awaiting = map[uint64]awaitPin{}
	}
	p.awaiting[id] = awaitPin{session, time.Now()}
}

// lateAck pins the session of a finished exchange whose ACK came last.
func (p *pinTable) lateAck(id uint64, worker string, live func(string) bool) {
	p.mu.Lock()
	a, ok := p.awaiting[id]
	delete(p.awaiting, id)
	p.mu.Unlock()
	if ok {
		p.pinFirst(a.session, worker, live)
	}
}

// prune forgets ACK waits that are too old to come.
func (p *pinTable) prune(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, a := range p.awaiting {
		if now.Sub(a.at) > 5*time.Second {
			delete(p.awaiting, id)
		}
	}
}

type pin struct {
	session, worker string
	used            time.Time
}

func newPinTable(ttl time.Duration) *pinTable {
	return &pinTable{ttl: ttl, items: make(map[string]*list.Element), order: list.New()}
}

func (p *pinTable) get(session string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.items[session]
	if e == nil {
		return ""
	}
	pn := e.Value.(*pin)
	if time.Since(pn.used) > p.ttl {
		p.order.Remove(e)
		delete(p.items, session)
		return ""
	}
	pn.used = time.Now()
	p.order.MoveToFront(e)
	return pn.worker
}

func (p *pinTable) set(session, worker string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e := p.items[session]; e != nil {
		pn := e.Value.(*pin)
		pn.worker, pn.used = worker, time.Now()
		p.order.MoveToFront(e)
		return
	}
	p.items[session] = p.order.PushFront(&pin{session: session, worker: worker, used: time.Now()})
	for len(p.items) > maxPinnedSessions {
		last := p.order.Back()
		p.order.Remove(last)
		delete(p.items, last.Value.(*pin).session)
	}
}

func (p *pinTable) forget(session string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e := p.items[session]; e != nil {
		p.order.Remove(e)
		delete(p.items, session)
	}
}
