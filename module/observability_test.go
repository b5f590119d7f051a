package caddyzmq

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	zmq "github.com/pebbe/zmq4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
)

// TestMetricsOutcomes: each way a request ends moves exactly its counter,
// and a registry of a config gathers the series, twice registered or not.
func TestMetricsOutcomes(t *testing.T) {
	env := newTestEnv(t, func(h *Handler) {
		h.Pools = []Pool{{Name: "outcomes", RequestEndpoint: h.RequestEndpoint, ReplyEndpoint: h.ReplyEndpoint}}
		h.RequestEndpoint, h.ReplyEndpoint = "", ""
		h.MaxRequestBody = 16
	})
	startFakeWorker(t, env.reqEP, env.repEP, func(r *mongrel2.Request) [][]byte {
		if r.Path == "/bad" {
			return [][]byte{[]byte("not HTTP at all\r\n\r\n")}
		}
		return okReply("ok")
	})
	env.waitForWorker(t)
	srv := httptest.NewServer(serveLikeCaddy(env.h))
	defer srv.Close()

	count := func(outcome string) float64 {
		d := new(dto.Metric)
		if err := zmqMetrics.requests.WithLabelValues("outcomes", outcome).Write(d); err != nil {
			t.Fatal(err)
		}
		return d.GetCounter().GetValue()
	}
	before := map[string]float64{}
	for _, o := range outcomeLabels {
		before[o] = count(o)
	}
	get := func(path string) int {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for range 3 {
		if st := get("/ok"); st != 200 {
			t.Fatalf("/ok: %d", st)
		}
	}
	if st := get("/bad"); st != 502 {
		t.Fatalf("/bad: %d", st)
	}
	resp, err := http.Post(srv.URL+"/big", "text/plain", strings.NewReader(strings.Repeat("x", 100)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 413 {
		t.Fatalf("big body: %d", resp.StatusCode)
	}
	want := map[string]float64{"answered": 3, "502": 1, "413": 1}
	for _, o := range outcomeLabels {
		if got := count(o) - before[o]; got != want[o] {
			t.Errorf("outcome %s moved by %v, want %v", o, got, want[o])
		}
	}

	reg := prometheus.NewPedanticRegistry()
	for range 2 {
		if err := registerMetrics(reg); err != nil {
			t.Fatalf("registering: %v", err)
		}
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gathering: %v", err)
	}
	names := map[string]bool{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "pool" && l.GetValue() == "outcomes" {
					names[f.GetName()] = true
				}
			}
		}
	}
	for _, n := range []string{"caddy_zmq_requests_total", "caddy_zmq_requests_in_flight", "caddy_zmq_connections",
		"caddy_zmq_workers", "caddy_zmq_bytes_total", "caddy_zmq_first_byte_seconds", "caddy_zmq_malformed_replies_total"} {
		if !names[n] {
			t.Errorf("no %s{pool=outcomes} gathered", n)
		}
	}
}

// dealerWorker is a zmqx/1 worker reduced to its control channel: it says
// HELLO and HB, and reports what it is told.
func dealerWorker(t *testing.T, env *testEnv, ctlEP, id string) <-chan string {
	t.Helper()
	got := make(chan string, 64)
	stop, done := make(chan struct{}), make(chan struct{})
	ready := make(chan error, 1)
	go func() {
		defer close(done)
		_, _, dealer, closeAll, err := openZmqxWorker(env, ctlEP, id)
		defer closeAll()
		ready <- err
		if err != nil {
			return
		}
		dealer.SetRcvtimeo(50 * time.Millisecond)
		dealer.SendBytes([]byte("HELLO 8"), 0)
		for {
			select {
			case <-stop:
				return
			default:
			}
			dealer.SendBytes([]byte("HB"), zmq.DONTWAIT)
			if msg, err := dealer.RecvBytes(0); err == nil {
				got <- string(msg)
			}
		}
	}()
	if err := <-ready; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { close(stop); <-done })
	return got
}

func adminCall(t *testing.T, method, path string) (int, []byte) {
	t.Helper()
	rec := httptest.NewRecorder()
	err := adminAPI{}.serve(rec, httptest.NewRequest(method, path, nil))
	if err != nil {
		var ae caddy.APIError
		if !errors.As(err, &ae) {
			t.Fatalf("%s %s: not an APIError: %v", method, path, err)
		}
		b, _ := json.Marshal(map[string]string{"error": ae.Err.Error()})
		return ae.HTTPStatus, b
	}
	return rec.Code, rec.Body.Bytes()
}

func workerOf(t *testing.T, pool, id string) WorkerView {
	t.Helper()
	for _, p := range poolViews(pool) {
		for _, w := range p.Workers {
			if w.ID == id {
				return w
			}
		}
	}
	t.Fatalf("no worker %s in pool %s", id, pool)
	return WorkerView{}
}

func awaitControl(t *testing.T, got <-chan string, want string) {
	t.Helper()
	deadline := time.After(testDeadline)
	for {
		select {
		case m := <-got:
			if m == want {
				return
			}
		case <-deadline:
			t.Fatalf("no %s on the control channel", want)
		}
	}
}

// TestAdminDrainResume: the admin routes list the pool and its worker,
// refuse to drain the last one unless forced, drain it (PAUSE) and resume
// it (RESUME), and answer errors with their status.
func TestAdminDrainResume(t *testing.T) {
	ctlEP := "ipc://" + filepath.Join(t.TempDir(), "ctl")
	env := newTestEnv(t, func(h *Handler) {
		h.Pools = []Pool{{Name: "steer", RequestEndpoint: h.RequestEndpoint, ReplyEndpoint: h.ReplyEndpoint, ControlEndpoint: ctlEP}}
		h.RequestEndpoint, h.ReplyEndpoint = "", ""
	})
	got := dealerWorker(t, env, ctlEP, "wk-steer")
	pollUntil(t, "the worker to join", func() bool {
		ps := poolViews("steer")
		return len(ps) == 1 && len(ps[0].Workers) == 1
	})
	w := workerOf(t, "steer", "wk-steer")
	if w.State != stateLive || w.MaxConcurrency != 8 || w.Joined.IsZero() {
		t.Fatalf("worker %+v: want live, max 8, joined", w)
	}

	tests := []struct {
		method, path string
		status       int
	}{
		{http.MethodGet, "/zmq/pools", 200},
		{http.MethodGet, "/zmq/pools/steer", 200},
		{http.MethodGet, "/zmq/pools/nope", 404},
		{http.MethodPost, "/zmq/pools", 405},
		{http.MethodPost, "/zmq/pools/steer/workers/nobody/drain", 404},
		{http.MethodPost, "/zmq/pools/steer/workers/wk-steer/drain", 409}, // the last one
		{http.MethodGet, "/zmq/pools/steer/workers/wk-steer/drain", 405},
		{http.MethodPost, "/zmq/pools/steer/workers/wk%2Fsteer/drain", 404}, // escaped: the id wk/steer
		{http.MethodGet, "/zmq/other", 404},
	}
	for _, tt := range tests {
		if status, body := adminCall(t, tt.method, tt.path); status != tt.status {
			t.Errorf("%s %s: %d %s, want %d", tt.method, tt.path, status, body, tt.status)
		}
	}
	if status, body := adminCall(t, http.MethodPost, "/zmq/pools/steer/workers/wk-steer/drain?force=1"); status != 200 {
		t.Fatalf("forced drain: %d %s", status, body)
	}
	awaitControl(t, got, "PAUSE")
	if w := workerOf(t, "steer", "wk-steer"); w.State != stateDraining {
		t.Fatalf("after drain: %+v", w)
	}
	if env.h.pools[0].transport.control.isLive("wk-steer") {
		t.Fatal("a drained worker counts as live for affinity")
	}
	if status, body := adminCall(t, http.MethodPost, "/zmq/pools/steer/workers/wk-steer/resume"); status != 200 {
		t.Fatalf("resume: %d %s", status, body)
	}
	awaitControl(t, got, "RESUME")
	if w := workerOf(t, "steer", "wk-steer"); w.State != stateLive {
		t.Fatalf("after resume: %+v", w)
	}
}

// TestRegistryForgetsCleanedUp: a cleaned-up config's pools leave the admin
// view and their series leave the metrics.
func TestRegistryForgetsCleanedUp(t *testing.T) {
	env := newTestEnv(t, func(h *Handler) {
		h.Pools = []Pool{{Name: "ephemeral", RequestEndpoint: h.RequestEndpoint, ReplyEndpoint: h.ReplyEndpoint}}
		h.RequestEndpoint, h.ReplyEndpoint = "", ""
	})
	env.h.pools[0].metrics().resends.Inc()
	if len(poolViews("ephemeral")) != 1 {
		t.Fatal("provisioned pool not listed")
	}
	env.h.cleanupObservability()
	if len(poolViews("ephemeral")) != 0 {
		t.Fatal("cleaned-up pool still listed")
	}
	if strings.Contains(dumpCollector(t, zmqMetrics.resends), `pool="ephemeral"`) {
		t.Fatal("series of a cleaned-up pool still exported")
	}
}

func dumpCollector(t *testing.T, c prometheus.Collector) string {
	t.Helper()
	ch := make(chan prometheus.Metric, 64)
	go func() { c.Collect(ch); close(ch) }()
	var b strings.Builder
	for m := range ch {
		b.WriteString(m.Desc().String())
		d := new(dto.Metric)
		_ = m.Write(d)
		for _, l := range d.GetLabel() {
			b.WriteString(" " + l.GetName() + `="` + l.GetValue() + `"`)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// TestPrintStatus: the status table, one line per worker, plain
// connections summed up.
func TestPrintStatus(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	pools := []PoolView{{
		Name: "main", PlainConnections: 2,
		Workers: []WorkerView{
			{ID: "wk-1", RemoteAddr: "10.0.0.7", State: "live", InFlight: 3, MaxConcurrency: 64, AffinitySessions: 2, LastHeard: now.Add(-120 * time.Millisecond), Since: now.Add(-5*time.Minute - 3*time.Second)},
			{ID: "wk-2", State: "lost", LastHeard: now.Add(-4 * time.Second), Since: now.Add(-3 * time.Second)},
		},
	}, {Name: "empty"}}
	var b bytes.Buffer
	if err := printStatus(&b, pools, now); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"POOL    WORKER                  ADDRESS    STATE   IN-FLIGHT   MAX   LAST-HEARD   AFFINITY   AGE",
		"main    wk-1                    10.0.0.7   live    3           64    120ms ago    2          5m3s",
		"main    wk-2                    -          lost    0           ?     4s ago       0          3s",
		"main    (2 plain connections)   -          -       -           -     -            -          -",
		"empty   (0 plain connections)   -          -       -           -     -            -          -",
	}
	if got := strings.TrimRight(b.String(), "\n"); got != strings.Join(want, "\n") {
		t.Fatalf("table:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
}

// BenchmarkScrape: what one scrape costs for what is ours, served as
// Caddy's admin endpoint serves it: /metrics with the zmq collectors only
// (Caddy's, the Go runtime's and the process's are not ours), gzip as
// Prometheus and Go clients ask for it; /zmq/pools; a provisioned pool
// with one worker.
func BenchmarkScrape(b *testing.B) {
	dir := b.TempDir()
	ctlEP := "ipc://" + filepath.Join(dir, "ctl")
	h := &Handler{Pools: []Pool{{Name: "bench", RequestEndpoint: "ipc://" + filepath.Join(dir, "req"),
		ReplyEndpoint: "ipc://" + filepath.Join(dir, "rep"), ControlEndpoint: ctlEP}}}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	defer h.Cleanup()
	reg := prometheus.NewRegistry()
	if err := registerMetrics(reg); err != nil {
		b.Fatal(err)
	}
	metrics := promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	pools := caddy.AdminHandlerFunc(adminAPI{}.serve)
	for _, tc := range []struct {
		name, path string
		serve      func(w http.ResponseWriter, r *http.Request) error
	}{
		{"metrics", "/metrics", func(w http.ResponseWriter, r *http.Request) error { metrics.ServeHTTP(w, r); return nil }},
		{"pools", "/zmq/pools", pools.ServeHTTP},
	} {
		b.Run(tc.name, func(b *testing.B) {
			req := httptest.NewRequest(http.MethodGet, tc.path, nil)
			req.Header.Set("Accept-Encoding", "gzip")
			b.ReportAllocs()
			for b.Loop() {
				w := httptest.NewRecorder()
				if err := tc.serve(w, req); err != nil || w.Code != http.StatusOK {
					b.Fatalf("%s: %d %v", tc.path, w.Code, err)
				}
			}
		})
	}
}
