package workerkit

import (
	"context"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

// PinnedSessions runs all requests of one session, one at a time and in
// arrival order, on one goroutine locked to one OS thread
// (runtime.LockOSThread) for the whole session: for libraries that keep
// per-thread state (thread-local storage in C, COM apartments, OpenGL
// contexts). The session is the front end's affinity key, which reaches the
// worker as the trusted key ZMQX_SESSION; requests without it run as
// usual. With affinity the front end sends every request of a session to
// one worker process; this keeps them on one thread inside it.
//
// The first request of a session starts its thread. The session ends when
// it has had no request for IdleTimeout, when its handler calls
// Session.End, when its handler panics, or when the worker drains; its
// thread then exits (the goroutine returns still locked, and Go ends the
// thread with it), taking its thread-local state along. The next request of
// the session starts a fresh thread, and Session.Fresh tells the handler.
//
// Threads are bounded by MaxThreads. A new session that finds them all
// taken waits up to Wait for one to be freed, then is answered 503 Service
// Unavailable with Retry-After, which the front end relays.
//
// Queued requests of a session hold handler slots (Worker.MaxConcurrent)
// while they wait for the one before them.
//
// The process's main thread is the exception to "the thread ends": Go
// parks it for good instead (the process would end with it), so a session
// that ran there leaves one idle thread behind. A worker keeps the main
// thread out of sessions by locking its main goroutine to it in an init
// function of package main (func init() { runtime.LockOSThread() }), as
// the pinned example does.
type PinnedSessions struct {
	// MaxThreads bounds the sessions alive at once, and so their threads.
	// Default 16.
	MaxThreads int
	// IdleTimeout ends a session that has had no request for this long.
	// Default 1 minute.
	IdleTimeout time.Duration
	// Wait is how long a new session waits for a thread when MaxThreads
	// are taken. Default 1 second.
	Wait time.Duration
}

// Defaults of PinnedSessions.
const (
	DefaultMaxPinnedThreads  = 16
	DefaultPinnedIdleTimeout = time.Minute
	DefaultPinnedSessionWait = time.Second
)

func (p PinnedSessions) withDefaults() PinnedSessions {
	if p.MaxThreads <= 0 {
		p.MaxThreads = DefaultMaxPinnedThreads
	}
	if p.IdleTimeout <= 0 {
		p.IdleTimeout = DefaultPinnedIdleTimeout
	}
	if p.Wait <= 0 {
		p.Wait = DefaultPinnedSessionWait
	}
	return p
}

// Session is what a handler knows of the pinned session its request runs
// in; see SessionFromContext.
type Session struct {
	key   string
	fresh bool
	ps    *pinnedSession
}

type sessionCtxKey struct{}

// SessionFromContext returns the pinned session of a request
// (r.Context()), or nil when the request does not run in one (the worker
// has no PinnedSessions, or the request carries no session key).
func SessionFromContext(ctx context.Context) *Session {
	s, _ := ctx.Value(sessionCtxKey{}).(*Session)
	return s
}

// Key is the session's name: the front end's affinity key.
func (s *Session) Key() string { return s.key }

// Fresh reports whether this request is the first on its thread: the
// session is new, or its previous thread ended (idle, End, a panic, a
// worker restart or another worker taking the session over). Thread-local
// state must then be set up again.
func (s *Session) Fresh() bool { return s.fresh }

// End ends the session once the current request's handler returns: its
// thread exits, and the session's next request starts a fresh one.
func (s *Session) End() { s.ps.ending.Store(true) }

// sessionTable is a worker's pinned sessions.
type sessionTable struct {
	s   *server
	cfg PinnedSessions
	// threads holds one token per session thread alive.
	threads chan struct{}

	mu    sync.Mutex
	byKey map[string]*pinnedSession
}

// pinnedSession is one session: its requests, waiting in order, and the
// goroutine that runs them.
type pinnedSession struct {
	key  string
	wake chan struct{} // a request was queued
	// ending: the handler called End.
	ending atomic.Bool
	// Guarded by sessionTable.mu. A session in byKey is never closed:
	// both change together.
	queue  []*flight
	closed bool
}

// testHookSessionThread, when set by tests, observes session threads
// starting (true) and ending (false).
var testHookSessionThread func(key string, start bool)

func newSessionTable(s *server, cfg *PinnedSessions) *sessionTable {
	if cfg == nil {
		return nil
	}
	c := cfg.withDefaults()
	return &sessionTable{s: s, cfg: c, threads: make(chan struct{}, c.MaxThreads), byKey: map[string]*pinnedSession{}}
}

// sessionKeyOf returns the trusted session key of req, or "".
func sessionKeyOf(req *mongrel2.Request) string {
	key := ""
	for i := range req.Headers {
		if h := &req.Headers[i]; h.Name == zmqx.HeaderSession {
			key = h.Value() // the last one wins, as everywhere
		}
	}
	return key
}

// route queues fl, which holds a handler slot, on its session and reports
// true; false if fl belongs to no session (it then runs as usual).
func (t *sessionTable) route(fl *flight) bool {
	key := sessionKeyOf(fl.req)
	if key == "" {
		return false
	}
	t.mu.Lock()
	ps := t.byKey[key]
	created := ps == nil
	if created {
		ps = &pinnedSession{key: key, wake: make(chan struct{}, 1)}
		t.byKey[key] = ps
	}
	ps.queue = append(ps.queue, fl)
	t.mu.Unlock()
	if created {
		go t.runSession(ps)
	} else {
		select {
		case ps.wake <- struct{}{}:
		default:
		}
	}
	return true
}

// runSession is the life of one session's thread.
func (t *sessionTable) runSession(ps *pinnedSession) {
	if !t.takeThread() {
		t.reject(ps)
		return
	}
	// Never unlocked: when this goroutine returns, Go ends the thread
	// with it, so no other goroutine ever runs on a thread a session (or
	// a panic) left in an unknown state, and the session's thread-local
	// state goes with it.
	runtime.LockOSThread()
	defer func() { <-t.threads }()
	if testHookSessionThread != nil {
		testHookSessionThread(ps.key, true)
		defer testHookSessionThread(ps.key, false)
	}
	idle := time.NewTimer(t.cfg.IdleTimeout)
	defer idle.Stop()
	fresh := true
	for {
		fl := t.next(ps, idle)
		if fl == nil {
			return
		}
		ok := t.serve(ps, fl, fresh)
		fresh = false
		if !ok || ps.ending.Load() {
			t.retire(ps)
			return
		}
	}
}

// takeThread takes a thread token, waiting up to cfg.Wait.
func (t *sessionTable) takeThread() bool {
	select {
	case t.threads <- struct{}{}:
		return true
	default:
	}
	timer := time.NewTimer(t.cfg.Wait)
	defer timer.Stop()
	select {
	case t.threads <- struct{}{}:
		return true
	case <-timer.C:
		return false
	}
}

// next returns the session's next request, waiting for one; nil when the
// session ends instead (idle, or the worker drains), after which it takes
// no more requests.
func (t *sessionTable) next(ps *pinnedSession, idle *time.Timer) *flight {
	for {
		t.mu.Lock()
		if len(ps.queue) > 0 {
			fl := ps.queue[0]
			ps.queue[0] = nil
			ps.queue = ps.queue[1:]
			t.mu.Unlock()
			return fl
		}
		t.mu.Unlock()
		idle.Reset(t.cfg.IdleTimeout)
		select {
		case <-ps.wake:
			continue
		case <-idle.C:
		case <-t.s.stop:
		}
		t.mu.Lock()
		if len(ps.queue) > 0 {
			t.mu.Unlock()
			continue
		}
		t.closeLocked(ps)
		t.mu.Unlock()
		return nil
	}
}

// closeLocked ends ps: it takes no more requests. t.mu is held.
func (t *sessionTable) closeLocked(ps *pinnedSession) {
	ps.closed = true
	if t.byKey[ps.key] == ps {
		delete(t.byKey, ps.key)
	}
}

// retire ends ps after a panic or End; requests of the session already
// queued go to a fresh session of the same key.
func (t *sessionTable) retire(ps *pinnedSession) {
	t.mu.Lock()
	t.closeLocked(ps)
	rest := ps.queue
	ps.queue = nil
	var fresh *pinnedSession
	if len(rest) > 0 {
		fresh = &pinnedSession{key: ps.key, wake: make(chan struct{}, 1), queue: rest}
		t.byKey[ps.key] = fresh
	}
	t.mu.Unlock()
	if fresh != nil {
		go t.runSession(fresh)
	}
}

// reject answers every request of ps with 503: no thread came free in time.
func (t *sessionTable) reject(ps *pinnedSession) {
	t.mu.Lock()
	t.closeLocked(ps)
	rest := ps.queue
	ps.queue = nil
	t.mu.Unlock()
	t.s.log.Warn("pinned sessions: every thread is taken; answering 503",
		"max_threads", t.cfg.MaxThreads, "waited", t.cfg.Wait, "requests", len(rest))
	for _, fl := range rest {
		t.s.serveWith(fl, http.HandlerFunc(sessionsBusy))
	}
}

func sessionsBusy(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Retry-After", "1")
	w.WriteHeader(http.StatusServiceUnavailable)
	_, _ = w.Write([]byte("Service Unavailable: every pinned session thread of this worker is taken\n"))
}

// serve runs fl on the calling (session) goroutine and reports whether the
// handler returned normally.
func (t *sessionTable) serve(ps *pinnedSession, fl *flight, fresh bool) bool {
	if fl.ctx.Err() != nil {
		// Its client left (or the worker stops hard) while it waited
		// behind the session's earlier requests.
		t.s.finishUnstarted(fl)
		return true
	}
	fl.ctx = context.WithValue(fl.ctx, sessionCtxKey{}, &Session{key: ps.key, fresh: fresh, ps: ps})
	return t.s.serveWith(fl, t.s.h)
}

// finishUnstarted gives up a started request (it holds a handler slot and
// is counted as running) whose handler will not run.
func (s *server) finishUnstarted(fl *flight) {
	s.unregister(fl)
	fl.cancel()
	s.running.Add(-1)
	<-s.sem
	s.handlers.Done()
}

// liveSessions reports the sessions alive (for tests).
func (t *sessionTable) liveSessions() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.byKey)
}
