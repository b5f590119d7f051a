package integration

// Helpers of the routing tests (routing_test.go, netns_test.go): several
// workers at once, one request with its outcome, a load that records every
// request, and SIGKILL.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// rtHit is the outcome of one request.
type rtHit struct {
	Start    time.Time
	Dur      time.Duration
	Status   int    // 0 when Err is set
	Worker   string // X-Worker of the answer
	Token    string // the X-Token sent
	TokenOK  bool   // the answer echoed exactly that token
	Body     []byte
	Header   http.Header
	Reused   bool // sent on a reused keep-alive connection
	Err      error
	Tag      string // caller's label (front end, session, ...)
	Retried  bool   // sent again after a transport error on a reused connection
	Response *http.Response
}

// ok reports a 200 carrying the request's own token.
func (h rtHit) ok() bool { return h.Err == nil && h.Status == http.StatusOK && h.TokenOK }

func (h rtHit) String() string {
	if h.Err != nil {
		return fmt.Sprintf("%s [%s] error after %v: %v", h.Start.Format("15:04:05.000"), h.Tag, h.Dur.Round(time.Millisecond), h.Err)
	}
	return fmt.Sprintf("%s [%s] %d from %q after %v (token ok %v): %q", h.Start.Format("15:04:05.000"), h.Tag, h.Status,
		h.Worker, h.Dur.Round(time.Millisecond), h.TokenOK, tail(string(h.Body), 160))
}

// rtSend makes one request with a fresh token in its X-Token header (and in
// place of every "{tok}" in url and body) and reads the whole answer within
// timeout. hdr adds headers (Cookie, X-Tenant...).
func rtSend(client *http.Client, method, url string, body string, hdr http.Header, timeout time.Duration) rtHit {
	tok := newToken("rt")
	url = strings.ReplaceAll(url, "{tok}", tok)
	body = strings.ReplaceAll(body, "{tok}", tok)
	h := rtHit{Start: time.Now(), Token: tok}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var reused atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) { reused.Store(info.Reused) },
	})
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		h.Err = err
		return h
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	req.Header.Set("X-Token", tok)
	resp, err := client.Do(req)
	h.Reused = reused.Load()
	if err != nil {
		h.Err, h.Dur = err, time.Since(h.Start)
		return h
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	h.Dur = time.Since(h.Start)
	if err != nil {
		h.Err = fmt.Errorf("reading body: %w", err)
		return h
	}
	h.Status, h.Worker, h.Body, h.Header, h.Response = resp.StatusCode, resp.Header.Get("X-Worker"), b, resp.Header, resp
	h.TokenOK = resp.Header.Get("X-Echo-Token") == tok
	return h
}

// rtSendRetry is rtSend that, after a transport error on a reused keep-alive
// connection, sends the request once more. That error is an idle connection
// closed by a server going away just as the request went out on it (Caddy
// shows it with reverse_proxy too during reloads); RFC 9112 9.3.1 lets
// clients retry then, as browsers do. Only GET is retried.
func rtSendRetry(client *http.Client, url string, hdr http.Header, timeout time.Duration) rtHit {
	h := rtSend(client, http.MethodGet, url, "", hdr, timeout)
	// Also seen, on a fresh connection: EOF or a reset before any response,
	// when the old server had accepted it just as it shut down (net/http
	// closes connections in StateNew at Shutdown; no handler ran).
	if h.Err != nil && (h.Reused || errors.Is(h.Err, io.EOF) || errors.Is(h.Err, syscall.ECONNRESET)) {
		first := h
		h = rtSend(client, http.MethodGet, url, "", hdr, timeout)
		h.Retried = true
		if h.Err != nil {
			h.Err = fmt.Errorf("%v (retried after: %v)", h.Err, first.Err)
		}
	}
	return h
}

// rtWaitWorkers polls url until every worker in names has answered it with a
// 200, so that all of them are connected. Other answers (503 while nobody is
// connected, other workers) are ignored. hdr may be nil.
func rtWaitWorkers(t testing.TB, client *http.Client, url string, names []string, procs ...*process) {
	t.Helper()
	seen := map[string]bool{}
	abort := func() error {
		for _, p := range procs {
			if p.Exited() {
				return fmt.Errorf("%s exited: %v", p.name, p.err)
			}
		}
		return nil
	}
	err := poll(startTimeout, abort, func() error {
		h := rtSend(client, http.MethodGet, url, "", nil, 3*time.Second)
		if h.Status == http.StatusOK {
			seen[h.Worker] = true
		}
		var missing []string
		for _, n := range names {
			if !seen[n] {
				missing = append(missing, n)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("not heard from %v yet (last: %v)", missing, h)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("workers behind %s: %v", url, err)
	}
}

// rtKill sends SIGKILL to the process group of p and waits for it to end.
func rtKill(t testing.TB, p *process) {
	t.Helper()
	if err := syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL); err != nil && !p.Exited() {
		t.Fatalf("SIGKILL %s: %v", p.name, err)
	}
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		t.Fatalf("%s still running %v after SIGKILL", p.name, stopTimeout)
	}
}

// rtStartWorkers starts one testworker per name, each serving frontEnds.
func rtStartWorkers(t testing.TB, names []string, frontEnds ...string) []*process {
	t.Helper()
	ps := make([]*process, len(names))
	for i, n := range names {
		ps[i] = startTestworker(t, n, frontEnds...)
	}
	return ps
}

// rtFrontEnd is the -frontend value with a control channel: requests,
// replies, control.
func rtFrontEnd(requests, replies, control string) string {
	return requests + "," + replies + "," + control
}

// rtLoad runs clients goroutines, each calling do(client index, request
// index) in a loop until stop is called (or the deadline passes), and
// records every hit.
type rtLoad struct {
	stopped atomic.Bool
	wg      sync.WaitGroup
	mu      sync.Mutex
	hits    []rtHit
	okCount atomic.Int64
}

func rtStartLoad(clients int, deadline time.Duration, do func(i, n int) rtHit) *rtLoad {
	l := &rtLoad{}
	end := time.Now().Add(deadline)
	for i := 0; i < clients; i++ {
		l.wg.Add(1)
		go func(i int) {
			defer l.wg.Done()
			for n := 0; !l.stopped.Load() && time.Now().Before(end); n++ {
				h := do(i, n)
				if h.ok() {
					l.okCount.Add(1)
				}
				l.mu.Lock()
				l.hits = append(l.hits, h)
				l.mu.Unlock()
			}
		}(i)
	}
	return l
}

// stop ends the load and returns every hit, in completion order.
func (l *rtLoad) stop() []rtHit {
	l.stopped.Store(true)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]rtHit(nil), l.hits...)
}

// snapshot returns the hits so far.
func (l *rtLoad) snapshot() []rtHit {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]rtHit(nil), l.hits...)
}

// waitUntil polls cond over the hits so far until it holds or timeout.
func (l *rtLoad) waitUntil(t testing.TB, timeout time.Duration, what string, cond func(hits []rtHit) error) {
	t.Helper()
	if err := poll(timeout, nil, func() error { return cond(l.snapshot()) }); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// rtFailures returns the hits that are not a 200 with their own token.
func rtFailures(hits []rtHit) []rtHit {
	var bad []rtHit
	for _, h := range hits {
		if !h.ok() {
			bad = append(bad, h)
		}
	}
	return bad
}

// rtReportFailures fails the test with up to 20 of the failed hits.
func rtReportFailures(t testing.TB, what string, total int, bad []rtHit) {
	t.Helper()
	if len(bad) == 0 {
		return
	}
	lines := make([]string, 0, 21)
	for i, h := range bad {
		if i == 20 {
			lines = append(lines, fmt.Sprintf("... and %d more", len(bad)-20))
			break
		}
		lines = append(lines, h.String())
	}
	t.Errorf("%s: %d of %d requests failed:\n%s", what, len(bad), total, strings.Join(lines, "\n"))
}

// rtFilterHits returns the hits for which keep is true.
func rtFilterHits(hits []rtHit, keep func(rtHit) bool) []rtHit {
	var out []rtHit
	for _, h := range hits {
		if keep(h) {
			out = append(out, h)
		}
	}
	return out
}

// rtCountBy counts hits by a key.
func rtCountBy(hits []rtHit, key func(rtHit) string) map[string]int {
	m := map[string]int{}
	for _, h := range hits {
		m[key(h)]++
	}
	return m
}

// rtFmtCounts prints a count map in key order.
func rtFmtCounts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, m[k])
	}
	return strings.Join(parts, " ")
}

// rtRun runs a command and returns its combined output.
func rtRun(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = os.Environ()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// rtLogLines returns the lines of a process's output that contain s.
func rtLogLines(p *process, s string) []string { return rtLogLinesSince(p, 0, s) }

// rtLogMark is the current length of a process's output, for rtLogLinesSince.
func rtLogMark(p *process) int { return len(p.out.String()) }

// rtLogLinesSince returns the lines containing s that the process wrote
// after mark (from rtLogMark).
func rtLogLinesSince(p *process, mark int, s string) []string {
	var out []string
	for _, line := range strings.Split(p.out.String()[mark:], "\n") {
		if strings.Contains(line, s) {
			out = append(out, line)
		}
	}
	return out
}
