package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Observability end to end: the caddy_zmq_* metrics on the admin
// endpoint's /metrics, admin.api.zmq (GET /zmq/pools, drain, resume), the
// worker events through Caddy's events app, `caddy zmq status`, and all of
// it across `caddy reload`. Config: caddyfiles/observability.Caddyfile.

// detectBound is how long a state change may take to show: a lost worker is
// declared after one second of silence (plus a sweep), a hung one after
// hung_timeout; the rest is slack for a loaded machine.
const detectBound = 15 * time.Second

type obsPool struct {
	Name             string      `json:"name"`
	ControlEndpoint  string      `json:"control_endpoint"`
	Connections      int64       `json:"connections"`
	PlainConnections int64       `json:"plain_connections"`
	InFlight         int         `json:"in_flight"`
	MaxInflight      int         `json:"max_inflight"`
	Workers          []obsWorker `json:"workers"`
	RequestPeers     []struct {
		RemoteAddr string `json:"remote_addr"`
	} `json:"request_peers"`
}

type obsWorker struct {
	ID             string    `json:"id"`
	RemoteAddr     string    `json:"remote_addr"`
	State          string    `json:"state"`
	InFlight       int       `json:"in_flight"`
	MaxConcurrency int       `json:"max_concurrency"`
	LastHeard      time.Time `json:"last_heard"`
	Since          time.Time `json:"since"`
}

func startObsCaddy(t *testing.T, env map[string]string) (*caddy, string) {
	t.Helper()
	events := filepath.Join(t.TempDir(), "events.log")
	all := map[string]string{"EVENTS_LOG": events}
	for k, v := range env {
		all[k] = v
	}
	c := startCaddy(t, caddyOpts{Config: "caddyfiles/observability.Caddyfile", Env: all})
	return c, events
}

// startNamedWorker runs bin/testworker with worker id and X-Worker name id.
func startNamedWorker(t *testing.T, c *caddy, id string) *process {
	t.Helper()
	cmd := command(t, testworkerBin(t), "-name", id, "-id", id, "-frontend", c.FrontEndControl())
	p := startProcess(t, id, cmd)
	p.MustWaitFor("SERVING", startTimeout)
	return p
}

func adminDo(t *testing.T, c *caddy, method, path string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+c.Admin+path, nil)
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

func adminPools(t *testing.T, c *caddy) []obsPool {
	t.Helper()
	status, body := adminDo(t, c, http.MethodGet, "/zmq/pools")
	if status != http.StatusOK {
		t.Fatalf("GET /zmq/pools: %d %s", status, body)
	}
	var pools []obsPool
	if err := json.Unmarshal(body, &pools); err != nil {
		t.Fatalf("GET /zmq/pools: %v in %s", err, body)
	}
	return pools
}

// workerStates maps worker id to state in pool.
func workerStates(t *testing.T, c *caddy, pool string) (map[string]obsWorker, obsPool) {
	t.Helper()
	for _, p := range adminPools(t, c) {
		if p.Name == pool {
			m := map[string]obsWorker{}
			for _, w := range p.Workers {
				m[w.ID] = w
			}
			return m, p
		}
	}
	t.Fatalf("no pool %s in /zmq/pools", pool)
	return nil, obsPool{}
}

// waitStates polls /zmq/pools until every worker in want has its state.
func waitStates(t *testing.T, c *caddy, pool string, want map[string]string) {
	t.Helper()
	var last map[string]obsWorker
	err := poll(detectBound, nil, func() error {
		last, _ = workerStates(t, c, pool)
		for id, st := range want {
			if last[id].State != st {
				return fmt.Errorf("worker %s is %q, want %q", id, last[id].State, st)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("states %v: %v (last: %+v)", want, err, last)
	}
}

// scrape reads the admin endpoint's /metrics: series (name{sorted labels})
// to value, for the caddy_zmq_ series.
func scrape(t *testing.T, c *caddy) map[string]float64 {
	t.Helper()
	status, body := adminDo(t, c, http.MethodGet, "/metrics")
	if status != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", status, body)
	}
	m := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, "caddy_zmq_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		m[line[:i]] = v
	}
	return m
}

// series names one series as the exposition format writes it.
func series(name string, labels ...string) string {
	var kv []string
	for i := 0; i+1 < len(labels); i += 2 {
		kv = append(kv, labels[i]+`="`+labels[i+1]+`"`)
	}
	sort.Strings(kv)
	if len(kv) == 0 {
		return name
	}
	return name + "{" + strings.Join(kv, ",") + "}"
}

func getWorker(t *testing.T, client *http.Client, url string) (int, string) {
	t.Helper()
	r := mustDo(t, client, http.MethodGet, url, nil, nil)
	return r.StatusCode, r.Header.Get("X-Worker")
}

// TestObservabilityMetrics: after a scripted load with known outcomes
// (so many 200s, one 504, one 503, one retry), the counters scraped from
// /metrics moved by exactly those numbers, and the gauges and histograms
// agree with them.
func TestObservabilityMetrics(t *testing.T) {
	c, _ := startObsCaddy(t, map[string]string{
		"REPLY_TIMEOUT": "5s", "MAX_INFLIGHT": "1", "QUEUE_TIMEOUT": "300ms", "HUNG_TIMEOUT": "off",
		"BROADCAST_TIMEOUT": "3s",
	})
	client := c.Client(modeHTTP)
	defer client.CloseIdleConnections()
	a := startNamedWorker(t, c, "wk-a")
	waitWorker(t, client, c.HTTPURL("/echo"), "wk-a", a)

	before := scrape(t, c)
	pool := func(name string, labels ...string) string {
		return series(name, append([]string{"pool", "main"}, labels...)...)
	}
	delta := func(after map[string]float64, s string) float64 { return after[s] - before[s] }

	// 20 answered.
	ok200 := 0
	for i := 0; i < 20; i++ {
		if st, _ := getWorker(t, client, c.HTTPURL("/echo")); st != http.StatusOK {
			t.Fatalf("request %d: %d", i, st)
		}
		ok200++
	}

	// One 504: a request its worker never answers holds the pool's only
	// slot until reply_timeout; meanwhile one 503: a request that waits
	// queue_timeout for that slot.
	hung := make(chan int, 1)
	go func() {
		r, err := do(client, http.MethodGet, c.HTTPURL("/hang/metrics"), nil, nil)
		if err != nil {
			hung <- -1
			return
		}
		hung <- r.StatusCode
	}()
	if err := poll(detectBound, nil, func() error {
		if v := scrape(t, c)[pool("caddy_zmq_requests_in_flight")]; v != 1 {
			return fmt.Errorf("in flight %v", v)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if st, _ := getWorker(t, c.Client(modeHTTP), c.HTTPURL("/echo")); st != http.StatusServiceUnavailable {
		t.Fatalf("request without a slot: %d, want 503", st)
	}
	if st := <-hung; st != http.StatusGatewayTimeout {
		t.Fatalf("hanging request: %d, want 504", st)
	}

	// One retry: a GET that hangs on wk-a only; wk-b joins; wk-a is killed
	// while it holds the request, which is retried on wk-b.
	b := startNamedWorker(t, c, "wk-b")
	waitStates(t, c, "main", map[string]string{"wk-a": "live", "wk-b": "live"})

	// A broadcast counts once per worker asked: wk-a (asked first, ids
	// in order) holds the broadcast route's only slot and hangs until the
	// broadcast's timeout (504); wk-b waits queue_timeout for that slot
	// and is not asked (503).
	lines := broadcastLines(t, client, c.HTTPURL("/all/hang/broadcast?on=wk-a"))
	if len(lines) != 3 || lines[0]["worker"] != "wk-b" || lines[0]["type"] != "failed" ||
		lines[1]["worker"] != "wk-a" || lines[1]["type"] != "timed_out" {
		t.Fatalf("broadcast: %v, want wk-b failed (not sent), wk-a timed out, a summary", lines)
	}
	var retried struct {
		status int
		worker string
	}
	for retried.status == 0 {
		done := make(chan struct{})
		go func() {
			defer close(done)
			r, err := do(client, http.MethodGet, c.HTTPURL("/hang/retry?on=wk-a"), nil, nil)
			if err == nil {
				retried.status, retried.worker = r.StatusCode, r.Header.Get("X-Worker")
			}
		}()
		held := false
		_ = poll(detectBound, nil, func() error {
			select {
			case <-done:
				return nil // it went to wk-b and was answered at once
			default:
			}
			if ws, _ := workerStates(t, c, "main"); ws["wk-a"].InFlight == 1 {
				held = true
				return nil
			}
			return fmt.Errorf("not held yet")
		})
		if held {
			if err := a.cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			<-done
			if retried.status != http.StatusOK || retried.worker != "wk-b" {
				t.Fatalf("retried request: %d from %q, want 200 from wk-b", retried.status, retried.worker)
			}
		} else {
			<-done
			if retried.status != http.StatusOK {
				t.Fatalf("request answered by %s: %d", retried.worker, retried.status)
			}
			retried.status = 0 // not held by wk-a: counted, try again
		}
		ok200++
	}
	_ = b

	// Answered by wk-b, the one live worker left.
	if lines := broadcastLines(t, client, c.HTTPURL("/all/echo")); len(lines) != 2 || lines[0]["type"] != "answer" || lines[0]["worker"] != "wk-b" {
		t.Fatalf("broadcast: %v, want wk-b's answer and a summary", lines)
	}
	ok200++

	after := scrape(t, c)
	checks := []struct {
		series string
		want   float64
	}{
		{pool("caddy_zmq_requests_total", "outcome", "answered"), float64(ok200)},
		{pool("caddy_zmq_requests_total", "outcome", "504"), 2},
		{pool("caddy_zmq_requests_total", "outcome", "503"), 2},
		{pool("caddy_zmq_requests_total", "outcome", "502"), 0},
		{pool("caddy_zmq_requests_total", "outcome", "client_gone"), 0},
		{pool("caddy_zmq_requests_total", "outcome", "aborted"), 0},
		{pool("caddy_zmq_retries_total", "reason", "lost"), 1},
		{pool("caddy_zmq_retries_total", "reason", "hung"), 0},
		{pool("caddy_zmq_first_byte_seconds_count"), float64(ok200)},
		{pool("caddy_zmq_workers_joined_total"), 1},
		{pool("caddy_zmq_workers_lost_total"), 1},
	}
	for _, ck := range checks {
		if got := delta(after, ck.series); got != ck.want {
			t.Errorf("%s moved by %v, want %v", ck.series, got, ck.want)
		}
	}
	if got := delta(after, pool("caddy_zmq_slot_wait_seconds_count")); got < 1 {
		t.Errorf("slot waits moved by %v, want at least the 503's", got)
	}
	for _, dir := range []string{"up", "down"} {
		if got := delta(after, pool("caddy_zmq_bytes_total", "direction", dir)); got <= 0 {
			t.Errorf("bytes %s moved by %v", dir, got)
		}
	}
	gauges := []struct {
		series string
		want   float64
	}{
		{pool("caddy_zmq_requests_in_flight"), 0},
		{pool("caddy_zmq_requests_waiting"), 0},
		{pool("caddy_zmq_max_inflight"), 1},
		{pool("caddy_zmq_workers", "state", "live"), 1},
		{pool("caddy_zmq_workers", "state", "lost"), 1},
		{pool("caddy_zmq_workers", "state", "paused"), 0},
		{pool("caddy_zmq_workers", "state", "draining"), 0},
	}
	for _, g := range gauges {
		if got, ok := after[g.series]; !ok || got != g.want {
			t.Errorf("%s = %v (present %v), want %v", g.series, got, ok, g.want)
		}
	}
}

// broadcastLines GETs a broadcast route and returns its NDJSON lines.
func broadcastLines(t *testing.T, client *http.Client, url string) []map[string]any {
	t.Helper()
	r := mustDo(t, client, http.MethodGet, url, nil, nil)
	if r.StatusCode != http.StatusOK {
		t.Fatalf("broadcast %s: %d", url, r.StatusCode)
	}
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(string(r.Body)), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("broadcast %s: line %q: %v", url, l, err)
		}
		lines = append(lines, m)
	}
	return lines
}

// TestObservabilityWorkers: four workers show as four live; one killed and
// one frozen show as lost, one drained through the admin API as draining,
// within the detection bound, and the gauges agree. The drained worker
// finishes the request it holds and gets no new one; resume restores it.
// `caddy zmq status` prints the same. Events reach the events app.
func TestObservabilityWorkers(t *testing.T) {
	c, events := startObsCaddy(t, nil)
	client := c.Client(modeHTTP)
	defer client.CloseIdleConnections()
	ids := []string{"wk-1", "wk-2", "wk-3", "wk-4"}
	procs := map[string]*process{}
	for _, id := range ids {
		procs[id] = startNamedWorker(t, c, id)
	}
	waitStates(t, c, "main", map[string]string{"wk-1": "live", "wk-2": "live", "wk-3": "live", "wk-4": "live"})
	ws, p := workerStates(t, c, "main")
	if len(ws) != 4 || p.PlainConnections != 0 {
		t.Fatalf("pool %+v: want exactly 4 workers, no plain connection", p)
	}
	for _, w := range ws {
		if w.MaxConcurrency <= 0 || w.LastHeard.IsZero() || w.Since.IsZero() {
			t.Errorf("worker %+v: max concurrency, last heard and since must be known", w)
		}
		checkRemoteAddr(t, w, procs[w.ID], p.ControlEndpoint)
	}

	// Errors as JSON with the right status.
	for _, tc := range []struct {
		method, path string
		status       int
	}{
		{http.MethodPost, "/zmq/pools/main/workers/nobody/drain", http.StatusNotFound},
		{http.MethodPost, "/zmq/pools/nopool/workers/wk-1/drain", http.StatusNotFound},
		{http.MethodGet, "/zmq/pools/main/workers/wk-1/drain", http.StatusMethodNotAllowed},
		{http.MethodDelete, "/zmq/pools", http.StatusMethodNotAllowed},
		{http.MethodGet, "/zmq/nothing", http.StatusNotFound},
	} {
		status, body := adminDo(t, c, tc.method, tc.path)
		var e struct {
			Error string `json:"error"`
		}
		if status != tc.status || json.Unmarshal(body, &e) != nil || e.Error == "" {
			t.Errorf("%s %s: %d %s, want %d and a JSON error", tc.method, tc.path, status, body, tc.status)
		}
	}

	// wk-4 holds a request; drained, it finishes it and takes nothing new.
	slow := holdOn(t, c, client, "wk-4", c.HTTPURL("/echo?sleep=2s&on=wk-4"))
	if status, body := adminDo(t, c, http.MethodPost, "/zmq/pools/main/workers/wk-4/drain"); status != http.StatusOK {
		t.Fatalf("drain: %d %s", status, body)
	}
	waitStates(t, c, "main", map[string]string{"wk-4": "draining"})
	for i := 0; i < 12; i++ {
		if st, w := getWorker(t, client, c.HTTPURL("/echo")); st != http.StatusOK || w == "wk-4" {
			t.Fatalf("request %d to a pool with wk-4 drained: %d from %s", i, st, w)
		}
	}
	if r := <-slow; r == nil || r.StatusCode != http.StatusOK || r.Header.Get("X-Worker") != "wk-4" {
		t.Fatalf("the drained worker's request: %+v, want 200 from wk-4", r)
	}

	// Kill wk-1, freeze wk-2.
	if err := procs["wk-1"].cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	frozen := procs["wk-2"].cmd.Process
	if err := frozen.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = frozen.Signal(syscall.SIGCONT) })
	waitStates(t, c, "main", map[string]string{"wk-1": "lost", "wk-2": "lost", "wk-3": "live", "wk-4": "draining"})
	m := scrape(t, c)
	for state, want := range map[string]float64{"live": 1, "lost": 2, "draining": 1, "paused": 0} {
		if got := m[series("caddy_zmq_workers", "pool", "main", "state", state)]; got != want {
			t.Errorf("caddy_zmq_workers{state=%s} = %v, want %v", state, got, want)
		}
	}

	// The status command shows the same.
	out, err := exec.Command(caddyBin(t), "zmq", "status", "--address", c.Admin).CombinedOutput()
	if err != nil {
		t.Fatalf("caddy zmq status: %v\n%s", err, out)
	}
	table := string(out)
	for _, want := range []string{"POOL", "WORKER", "ADDRESS", "STATE", "IN-FLIGHT"} {
		if !strings.Contains(table, want) {
			t.Errorf("status table lacks %s:\n%s", want, table)
		}
	}
	for id, st := range map[string]string{"wk-1": "lost", "wk-2": "lost", "wk-3": "live", "wk-4": "draining"} {
		if !lineHas(table, id, ws[id].RemoteAddr, st) {
			t.Errorf("status table: no line with %s %s:\n%s", id, st, table)
		}
	}

	// Draining the last live worker needs force; resume restores wk-4.
	if status, body := adminDo(t, c, http.MethodPost, "/zmq/pools/main/workers/wk-3/drain"); status != http.StatusConflict {
		t.Errorf("draining the last live worker: %d %s, want 409", status, body)
	}
	out, err = exec.Command(caddyBin(t), "zmq", "resume", "main", "wk-4", "--address", c.Admin).CombinedOutput()
	if err != nil {
		t.Fatalf("caddy zmq resume: %v\n%s", err, out)
	}
	waitStates(t, c, "main", map[string]string{"wk-4": "live"})
	if err := pollGET(client, c.HTTPURL("/echo"), []*process{procs["wk-3"], procs["wk-4"]}, func(r *http.Response, _ []byte) error {
		if r.StatusCode != http.StatusOK || r.Header.Get("X-Worker") != "wk-4" {
			return fmt.Errorf("%s from %s", r.Status, r.Header.Get("X-Worker"))
		}
		return nil
	}); err != nil {
		t.Fatalf("resumed wk-4 takes requests: %v", err)
	}

	// Events: every join, both losses, the drain and the resume.
	want := []string{
		"worker_joined wk-1", "worker_joined wk-2", "worker_joined wk-3", "worker_joined wk-4",
		"worker_draining wk-4", "worker_lost wk-1", "worker_lost wk-2", "worker_resumed wk-4",
	}
	waitEvents(t, events, "main", want)
}

// checkRemoteAddr: a worker connected over tcp loopback is listed with
// the address of its control connection, ip:port, the port the worker's
// side of that connection has.
func checkRemoteAddr(t *testing.T, w obsWorker, p *process, controlEndpoint string) {
	t.Helper()
	host, port, err := net.SplitHostPort(w.RemoteAddr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		t.Errorf("worker %s: remote_addr %q, want a loopback ip:port (%v)", w.ID, w.RemoteAddr, err)
		return
	}
	_, ctlPort, err := net.SplitHostPort(strings.TrimPrefix(controlEndpoint, "tcp://"))
	if err != nil {
		t.Fatalf("control endpoint %q: %v", controlEndpoint, err)
	}
	remote, _ := strconv.Atoi(ctlPort)
	local, err := tcpLocalPorts(p.cmd.Process.Pid, remote)
	if err != nil || len(local) != 1 {
		t.Errorf("worker %s: its connections to the control port %d: %v %v", w.ID, remote, local, err)
		return
	}
	if port != strconv.Itoa(local[0]) {
		t.Errorf("worker %s: remote_addr %q, but its control connection's port is %d", w.ID, w.RemoteAddr, local[0])
	}
}

// TestObservabilityHung: a worker that holds requests and answers none is
// shown paused, then resumed once it holds nothing and has sat out its
// cool-down; worker_hung and worker_resumed reach the events app.
func TestObservabilityHung(t *testing.T) {
	c, events := startObsCaddy(t, map[string]string{"HUNG_TIMEOUT": "500ms"})
	client := c.Client(modeHTTP)
	defer client.CloseIdleConnections()
	startNamedWorker(t, c, "wk-ok")
	startNamedWorker(t, c, "wk-hang")
	waitStates(t, c, "main", map[string]string{"wk-ok": "live", "wk-hang": "live"})

	// A GET that hangs on wk-hang, sent until wk-hang holds one (PUSH may
	// give the first ones to wk-ok, which answers them at once): taken back
	// once wk-hang is found hung, it is answered by wk-ok.
	held := holdOn(t, c, client, "wk-hang", c.HTTPURL("/hang/h?on=wk-hang"))
	waitStates(t, c, "main", map[string]string{"wk-hang": "paused"})
	if got := scrape(t, c)[series("caddy_zmq_workers", "pool", "main", "state", "paused")]; got != 1 {
		t.Errorf("paused gauge %v, want 1", got)
	}
	if r := <-held; r == nil || r.StatusCode != http.StatusOK || r.Header.Get("X-Worker") != "wk-ok" {
		t.Errorf("request taken back from the hung worker: %+v, want 200 from wk-ok", r)
	}
	waitStates(t, c, "main", map[string]string{"wk-hang": "live"})
	waitEvents(t, events, "main", []string{"worker_hung wk-hang", "worker_resumed wk-hang"})
}

// TestObservabilityReload: metrics and the admin API keep working across
// `caddy reload`: no duplicate registration, the renamed pool replaces the
// old one in /zmq/pools and /metrics, counters keep counting.
func TestObservabilityReload(t *testing.T) {
	c, _ := startObsCaddy(t, map[string]string{"POOL_NAME": "first"})
	client := c.Client(modeHTTP)
	defer client.CloseIdleConnections()
	w := startNamedWorker(t, c, "wk-r")
	waitWorker(t, client, c.HTTPURL("/echo"), "wk-r", w)
	answered := func(pool string) float64 {
		return scrape(t, c)[series("caddy_zmq_requests_total", "pool", pool, "outcome", "answered")]
	}
	if answered("first") < 1 {
		t.Fatalf("no answered requests counted for pool first")
	}

	// The same config again: nothing changes, nothing is registered twice.
	n := answered("first")
	if err := c.Reload(nil); err != nil {
		t.Fatal(err)
	}
	if st, _ := getWorker(t, client, c.HTTPURL("/echo")); st != http.StatusOK {
		t.Fatalf("after reload: %d", st)
	}
	if got := answered("first"); got != n+1 {
		t.Errorf("answered after a reload: %v, want %v (counting on)", got, n+1)
	}

	// Renamed: only the new name is listed, its workers with it.
	if err := c.Reload(map[string]string{"POOL_NAME": "second"}); err != nil {
		t.Fatal(err)
	}
	if err := poll(detectBound, nil, func() error {
		pools := adminPools(t, c)
		if len(pools) != 1 || pools[0].Name != "second" {
			return fmt.Errorf("pools %+v, want only second", pools)
		}
		if len(pools[0].Workers) != 1 || pools[0].Workers[0].State != "live" {
			return fmt.Errorf("workers %+v, want wk-r live", pools[0].Workers)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if st, _ := getWorker(t, client, c.HTTPURL("/echo")); st != http.StatusOK {
		t.Fatalf("after renaming reload: %d", st)
	}
	m := scrape(t, c)
	for s := range m {
		if strings.Contains(s, `pool="first"`) {
			t.Errorf("stale series after the pool was renamed: %s", s)
		}
	}
	if m[series("caddy_zmq_requests_total", "pool", "second", "outcome", "answered")] != 1 {
		t.Errorf("pool second: answered %v, want 1", m[series("caddy_zmq_requests_total", "pool", "second", "outcome", "answered")])
	}
	if m[series("caddy_zmq_workers", "pool", "second", "state", "live")] != 1 {
		t.Errorf("pool second: live workers %v, want 1", m[series("caddy_zmq_workers", "pool", "second", "state", "live")])
	}
	logs := strings.ToLower(c.proc.out.String())
	for _, bad := range []string{"duplicate metrics collector", "already registered", "registering metrics"} {
		if strings.Contains(logs, bad) {
			t.Errorf("caddy logged %q", bad)
		}
	}
}

// lineHas reports whether a line of table has all the words.
func lineHas(table string, words ...string) bool {
	for _, line := range strings.Split(table, "\n") {
		f := strings.Fields(line)
		all := true
		for _, w := range words {
			found := false
			for _, x := range f {
				if x == w {
					found = true
				}
			}
			all = all && found
		}
		if all {
			return true
		}
	}
	return false
}

// waitEvents polls the events log until it holds each "name worker" of want
// for pool.
func waitEvents(t *testing.T, path, pool string, want []string) {
	t.Helper()
	var seen map[string]bool
	err := poll(detectBound, nil, func() error {
		seen = map[string]bool{}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var e struct {
				Msg  string `json:"msg"`
				Name string `json:"name"`
				Data struct {
					Pool   string `json:"pool"`
					Worker string `json:"worker"`
				} `json:"data"`
			}
			if json.Unmarshal(sc.Bytes(), &e) == nil && e.Msg == "event" && e.Data.Pool == pool {
				seen[e.Name+" "+e.Data.Worker] = true
			}
		}
		for _, w := range want {
			if !seen[w] {
				return fmt.Errorf("no event %q", w)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("events: %v (seen %v)", err, seen)
	}
}

// TestObservabilityPlainHandler: a Mongrel2 handler, which has no control
// channel, shows as a plain connection beside the control channel's
// workers, in /zmq/pools and in `caddy zmq status`; it keeps the last
// workerkit worker drainable.
func TestObservabilityPlainHandler(t *testing.T) {
	c, _ := startObsCaddy(t, nil)
	m2 := startPythonHandler(t, c.Endpoint("ZMQ_REQUESTS"), c.Endpoint("ZMQ_REPLIES"))
	kit := startNamedWorker(t, c, "wk-kit")
	waitStates(t, c, "main", map[string]string{"wk-kit": "live"})
	// request_peers lists both connections to the request socket, each
	// with the address the handler's and the worker's side has. Both
	// connect in the background (a READY line or a HELLO does not mean
	// the request connection is up): their ports are read in the poll.
	_, reqPort, _ := net.SplitHostPort(strings.TrimPrefix(c.Endpoint("ZMQ_REQUESTS"), "tcp://"))
	remote, _ := strconv.Atoi(reqPort)
	if err := poll(detectBound, nil, func() error {
		_, p := workerStates(t, c, "main")
		if p.PlainConnections != 1 || p.Connections != 2 || len(p.Workers) != 1 {
			return fmt.Errorf("pool %+v: want 2 connections, 1 plain, 1 worker", p)
		}
		var want []string
		for _, proc := range []*process{m2, kit} {
			local, err := tcpLocalPorts(proc.cmd.Process.Pid, remote)
			if err != nil || len(local) != 1 {
				return fmt.Errorf("%s's connections to the request port: %v %v", proc.name, local, err)
			}
			want = append(want, net.JoinHostPort("127.0.0.1", strconv.Itoa(local[0])))
		}
		sort.Strings(want)
		var got []string
		for _, rp := range p.RequestPeers {
			got = append(got, rp.RemoteAddr)
		}
		sort.Strings(got)
		if strings.Join(got, " ") != strings.Join(want, " ") {
			return fmt.Errorf("request_peers %v, want %v", got, want)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(caddyBin(t), "zmq", "status", "--address", c.Admin).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "(1 plain connections)") || !lineHas(string(out), "main", "wk-kit", "live") {
		t.Fatalf("caddy zmq status: %v\n%s", err, out)
	}
	if status, body := adminDo(t, c, http.MethodPost, "/zmq/pools/main/workers/wk-kit/drain"); status != http.StatusOK {
		t.Fatalf("drain beside a plain handler: %d %s", status, body)
	}
	waitStates(t, c, "main", map[string]string{"wk-kit": "draining"})
}

// holdOn sends GET url until worker holds one such request (the admin API
// shows it in flight); requests that other workers answer meanwhile must
// be 200s. The returned channel gets the held request's response (nil on
// a transport error).
func holdOn(t *testing.T, c *caddy, client *http.Client, worker, url string) <-chan *response {
	t.Helper()
	for tries := 0; tries < 50; tries++ {
		done := make(chan *response, 1)
		go func() {
			r, _ := do(client, http.MethodGet, url, nil, nil)
			done <- r
		}()
		held := false
		_ = poll(detectBound, nil, func() error {
			if len(done) > 0 {
				return nil
			}
			if ws, _ := workerStates(t, c, "main"); ws[worker].InFlight >= 1 {
				held = true
				return nil
			}
			return fmt.Errorf("not held yet")
		})
		if held {
			return done
		}
		if r := <-done; r == nil || r.StatusCode != http.StatusOK {
			t.Fatalf("GET %s answered elsewhere: %+v", url, r)
		}
	}
	t.Fatalf("%s never held GET %s", worker, url)
	return nil
}
