package caddyzmq

import (
	"context"
	"io"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/zmqbridge/caddy-zmq/workerkit"
)

// hangable answers its name, or, while hung, holds every request until its
// context ends.
type hangable struct {
	name              string
	hung              atomic.Bool
	started, released atomic.Int64
}

func (h *hangable) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !h.hold(r) {
		_, _ = io.WriteString(w, h.name)
	}
}

// hold holds r until its context ends, while h is hung (readiness probes
// excepted); it reports whether it did.
func (h *hangable) hold(r *http.Request) bool {
	if !h.hung.Load() || r.URL.Path == "/__ready" {
		return false
	}
	h.started.Add(1)
	<-r.Context().Done()
	h.released.Add(1)
	return true
}

// newHungTestEnv is a handler with a control channel and a short
// hung_timeout (a long reply_timeout, so that only hung detection ends a
// held request); it returns the control endpoint too.
func newHungTestEnv(t *testing.T) (*testEnv, string) {
	t.Helper()
	ctlEP := "ipc://" + filepath.Join(t.TempDir(), "ctl")
	env := newTestEnv(t, func(h *Handler) {
		h.ControlEndpoint = ctlEP
		h.HungTimeout = caddy.Duration(300 * time.Millisecond)
		h.ReplyTimeout = caddy.Duration(30 * time.Second)
	})
	return env, ctlEP
}

func startKitWorker(t *testing.T, env *testEnv, ctlEP, id string, h http.Handler) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	w := &workerkit.Worker{
		FrontEnds: []workerkit.FrontEnd{{Requests: env.reqEP, Replies: env.repEP, Control: ctlEP}},
		Handler:   h, ID: id, ShutdownTimeout: time.Second,
	}
	go func() { done <- w.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker %s: %v", id, err)
		}
	})
}

// startHangablePair starts two workerkit workers, wk-a serving a and wk-b
// serving b (through wrap, when set), and waits until both are on the
// control channel and requests get through.
func startHangablePair(t *testing.T, env *testEnv, ctlEP string, a, b *hangable, wrap func(*hangable) http.Handler) *controlPlane {
	t.Helper()
	if wrap == nil {
		wrap = func(h *hangable) http.Handler { return h }
	}
	startKitWorker(t, env, ctlEP, "wk-a", wrap(a))
	startKitWorker(t, env, ctlEP, "wk-b", wrap(b))
	ctl := env.h.pools[0].transport.control
	pollUntil(t, "both workers on the control channel", func() bool {
		ka, _, _ := ctl.workerState("wk-a")
		kb, _, _ := ctl.workerState("wk-b")
		return ka && kb
	})
	env.waitForWorker(t)
	return ctl
}

func (c *controlPlane) workerState(id string) (known, hung, paused bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	wi := c.workers[id]
	if wi == nil {
		return false, false, false
	}
	return true, wi.hung, wi.paused
}

func pollUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testDeadline)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling interval
	}
}

// TestHungWorkerPausedAndItsGETsRetried: a worker that takes requests and
// answers none is found hung within hung_timeout, gets no new requests, its
// GETs are taken back (its handlers see their context end, so they cannot
// run them too) and answered by the other worker; once it answers again
// it is resumed.
func TestHungWorkerPausedAndItsGETsRetried(t *testing.T) {
	env, ctlEP := newHungTestEnv(t)
	a, b := &hangable{name: "A"}, &hangable{name: "B"}
	ctl := startHangablePair(t, env, ctlEP, a, b, nil)

	a.hung.Store(true)
	get := func() (int, string) {
		resp, err := http.Get(env.srv.URL + "/x")
		if err != nil {
			t.Error(err)
			return 0, ""
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(body)
	}
	load := func(n int) (byName map[string]int) {
		byName = map[string]int{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				for range n / 4 {
					code, body := get()
					mu.Lock()
					if code != 200 {
						body = http.StatusText(code)
					}
					byName[body]++
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		return byName
	}
	got := load(40)
	if got["B"] != 40 {
		t.Fatalf("answers %v, want all 40 from B", got)
	}
	if a.started.Load() == 0 {
		t.Fatal("the hung worker took no request: nothing was tested")
	}
	_, hung, paused := ctl.workerState("wk-a")
	if !hung || !paused {
		t.Fatalf("wk-a hung=%v paused=%v, want both", hung, paused)
	}
	pollUntil(t, "the hung handlers to see their requests taken back", func() bool {
		return a.released.Load() == a.started.Load()
	})

	before := a.started.Load()
	if got := load(40); got["B"] != 40 {
		t.Fatalf("after the pause: answers %v, want all 40 from B", got)
	}
	if n := a.started.Load() - before; n != 0 {
		t.Fatalf("the paused worker started %d more requests", n)
	}

	a.hung.Store(false)
	pollUntil(t, "wk-a to be resumed", func() bool {
		_, hung, paused := ctl.workerState("wk-a")
		return !hung && !paused
	})
	pollUntil(t, "wk-a to answer again", func() bool {
		_, body := get()
		return body == "A"
	})
}
