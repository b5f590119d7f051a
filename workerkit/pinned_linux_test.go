package workerkit

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

// The main goroutine keeps the process's main thread, so that no session
// runs there: Go parks the main thread, instead of ending it, when a locked
// goroutine on it returns (see PinnedSessions), and these tests check that
// session threads end.
func init() { runtime.LockOSThread() }

// pinnedAnswer is what pinnedHandler answers.
type pinnedAnswer struct {
	Session string `json:"session"`
	Pinned  bool   `json:"pinned"`
	Fresh   bool   `json:"fresh"`
	TID     int    `json:"tid"`
	Seq     int    `json:"seq"`
}

// pinnedHandler answers the thread it runs on. /panic panics, /end ends the
// session, /slow waits for release. It fails the request if two requests of
// one session ever run at once.
type pinnedHandler struct {
	mu      sync.Mutex
	running map[string]bool
	overlap atomic.Bool
	release chan struct{}
}

func (h *pinnedHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s := SessionFromContext(r.Context())
	a := pinnedAnswer{TID: syscall.Gettid()}
	if s != nil {
		a.Session, a.Pinned, a.Fresh = s.Key(), true, s.Fresh()
		h.mu.Lock()
		if h.running[s.Key()] {
			h.overlap.Store(true)
		}
		h.running[s.Key()] = true
		h.mu.Unlock()
		defer func() {
			h.mu.Lock()
			h.running[s.Key()] = false
			h.mu.Unlock()
		}()
	}
	a.Seq, _ = strconv.Atoi(r.URL.Query().Get("seq"))
	switch r.URL.Path {
	case "/panic":
		panic("session handler panics")
	case "/end":
		s.End()
	case "/slow":
		<-h.release
	}
	_ = json.NewEncoder(w).Encode(a)
}

func newPinnedHandler() *pinnedHandler {
	return &pinnedHandler{running: map[string]bool{}, release: make(chan struct{})}
}

func sessionReq(key, uri string) treq {
	return treq{uri: uri, headers: []mongrel2.Field{{Name: zmqx.HeaderSession, Values: []string{key}}}}
}

func readPinned(t *testing.T, f *testFE, conn string) (int, pinnedAnswer) {
	t.Helper()
	r := f.readReply(conn, "GET")
	var a pinnedAnswer
	if r.resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(r.body, &a); err != nil {
			t.Fatalf("conn %s: %v in %q", conn, err, r.body)
		}
	}
	return r.resp.StatusCode, a
}

func threadAlive(tid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", tid))
	return err == nil
}

func TestPinnedSessions(t *testing.T) {
	f := newTestFE(t)
	h := newPinnedHandler()
	w := &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: h,
		PinnedSessions: &PinnedSessions{MaxThreads: 8, IdleTimeout: time.Hour}}
	run := startWorker(t, w)
	conn := 0
	ask := func(key, uri string) (int, pinnedAnswer) {
		t.Helper()
		conn++
		c := strconv.Itoa(conn)
		f.request(c, sessionReq(key, uri))
		return readPinned(t, f, c)
	}

	t.Run("one thread per session, fresh first", func(t *testing.T) {
		tids := map[string]int{}
		for i := range 5 {
			for _, key := range []string{"a", "b", "c"} {
				st, a := ask(key, "/")
				eq(t, "status", st, 200)
				eq(t, "pinned", a.Pinned, true)
				eq(t, "fresh", a.Fresh, i == 0)
				if i == 0 {
					tids[key] = a.TID
				} else {
					eq(t, "tid of "+key, a.TID, tids[key])
				}
			}
		}
		if tids["a"] == tids["b"] || tids["b"] == tids["c"] || tids["a"] == tids["c"] {
			t.Errorf("sessions share a thread: %v", tids)
		}
	})
	t.Run("no session key: not pinned", func(t *testing.T) {
		for _, q := range []treq{
			{uri: "/"},
			// A client's header arrives lower-cased: not the front end's key.
			{uri: "/", headers: []mongrel2.Field{{Name: "zmqx_session", Values: []string{"a"}}}},
		} {
			conn++
			c := strconv.Itoa(conn)
			f.request(c, q)
			st, a := readPinned(t, f, c)
			eq(t, "status", st, 200)
			eq(t, "pinned", a.Pinned, false)
		}
	})
	t.Run("a panic answers 500 and ends the thread", func(t *testing.T) {
		_, before := ask("p", "/")
		st, _ := ask("p", "/panic")
		eq(t, "status", st, 500)
		waitUntil(t, "the panicked thread to exit", func() bool { return !threadAlive(before.TID) })
		st, after := ask("p", "/")
		eq(t, "status", st, 200)
		eq(t, "fresh", after.Fresh, true)
		if after.TID == before.TID {
			t.Errorf("same thread %d after a panic", after.TID)
		}
	})
	t.Run("End: the next request is fresh on a new thread", func(t *testing.T) {
		_, a := ask("e", "/end")
		waitUntil(t, "the ended thread to exit", func() bool { return !threadAlive(a.TID) })
		_, b := ask("e", "/")
		eq(t, "fresh", b.Fresh, true)
		if a.TID == b.TID {
			t.Errorf("same thread %d after End", a.TID)
		}
	})
	t.Run("queued requests run one at a time, in order", func(t *testing.T) {
		first := strconv.Itoa(conn + 1)
		for i := range 20 {
			conn++
			f.request(strconv.Itoa(conn), sessionReq("q", "/?seq="+strconv.Itoa(i)))
		}
		n, _ := strconv.Atoi(first)
		var tid int
		for i := range 20 {
			st, a := readPinned(t, f, strconv.Itoa(n+i))
			eq(t, "status", st, 200)
			eq(t, "seq", a.Seq, i)
			if i == 0 {
				tid = a.TID
			}
			eq(t, "tid", a.TID, tid)
		}
		eq(t, "overlapping requests of one session", h.overlap.Load(), false)
	})
	tids := []int{}
	for _, key := range []string{"a", "b", "c", "q"} {
		_, a := ask(key, "/")
		tids = append(tids, a.TID)
	}
	// Drain ends every session thread (not in a subtest: stop counts the
	// goroutines, and a subtest's would be one more).
	must(t, run.stop())
	for _, tid := range tids {
		waitUntil(t, fmt.Sprintf("session thread %d to exit after the drain (pid %d)", tid, os.Getpid()), func() bool { return !threadAlive(tid) })
	}
}

func TestPinnedSessionsIdle(t *testing.T) {
	f := newTestFE(t)
	w := &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: newPinnedHandler(),
		PinnedSessions: &PinnedSessions{IdleTimeout: 50 * time.Millisecond}}
	startWorker(t, w)
	f.request("1", sessionReq("idle", "/"))
	_, a := readPinned(t, f, "1")
	waitUntil(t, "the idle session's thread to exit", func() bool { return !threadAlive(a.TID) })
	f.request("2", sessionReq("idle", "/"))
	_, b := readPinned(t, f, "2")
	eq(t, "fresh after idle", b.Fresh, true)
}

func TestPinnedSessionsBounded(t *testing.T) {
	f := newTestFE(t)
	h := newPinnedHandler()
	var threads atomic.Int64
	testHookSessionThread = func(_ string, start bool) {
		if start {
			threads.Add(1)
		} else {
			threads.Add(-1)
		}
	}
	t.Cleanup(func() { testHookSessionThread = nil })
	w := &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: h,
		PinnedSessions: &PinnedSessions{MaxThreads: 2, IdleTimeout: time.Hour, Wait: 20 * time.Millisecond}}
	startWorker(t, w)
	for i, key := range []string{"one", "two"} {
		c := strconv.Itoa(i + 1)
		f.request(c, sessionReq(key, "/"))
		st, _ := readPinned(t, f, c)
		eq(t, "status", st, 200)
	}
	f.request("3", sessionReq("three", "/"))
	r := f.readReply("3", "GET")
	eq(t, "status past MaxThreads", r.resp.StatusCode, 503)
	eq(t, "Retry-After", r.resp.Header.Get("Retry-After"), "1")
	eq(t, "threads", threads.Load(), int64(2))

	// A session that waits gets the thread an ending session frees.
	f.request("4", sessionReq("two", "/end"))
	readPinned(t, f, "4")
	waitUntil(t, "the ended session's thread to be freed", func() bool { return threads.Load() == 1 })
	f.request("5", sessionReq("three", "/"))
	st, a := readPinned(t, f, "5")
	eq(t, "status once a thread is free", st, 200)
	eq(t, "fresh", a.Fresh, true)
}
