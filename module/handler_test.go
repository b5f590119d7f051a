package caddyzmq

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"weak"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	zmq "github.com/pebbe/zmq4"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
)

// fakeWorker is a minimal Mongrel2 handler over real libzmq: it connects a
// PULL and a PUB and answers each request with whatever respond returns
// (nil: no answer at all). Requests are also sent to seen.
type fakeWorker struct {
	stop chan struct{}
	done chan struct{}
	seen chan *mongrel2.Request
	// out takes reply messages (whole, sender first) for the worker to
	// publish itself, apart from answers to requests.
	out chan []byte
}

func startFakeWorker(t *testing.T, reqEP, repEP string, respond func(*mongrel2.Request) [][]byte) *fakeWorker {
	t.Helper()
	fw := &fakeWorker{stop: make(chan struct{}), done: make(chan struct{}), seen: make(chan *mongrel2.Request, 1024),
		out: make(chan []byte, 16)}
	ready := make(chan error, 1)
	go func() {
		defer close(fw.done)
		pull, _ := zmq.NewSocket(zmq.PULL)
		pub, _ := zmq.NewSocket(zmq.PUB)
		defer pull.Close()
		defer pub.Close()
		pull.SetLinger(0)
		pub.SetLinger(0)
		pull.SetRcvtimeo(20 * time.Millisecond)
		if err := pub.Connect(repEP); err != nil {
			ready <- err
			return
		}
		if err := pull.Connect(reqEP); err != nil {
			ready <- err
			return
		}
		ready <- nil
		for {
			select {
			case <-fw.stop:
				return
			case m := <-fw.out:
				pub.SendBytes(m, 0)
				continue
			default:
			}
			msg, err := pull.RecvBytes(0)
			if err != nil {
				continue
			}
			req, err := mongrel2.ParseRequest(msg)
			if err != nil {
				t.Errorf("worker got an unparsable request %q: %v", msg, err)
				continue
			}
			fw.seen <- req
			for _, body := range respond(req) {
				pub.SendBytes(mongrel2.AppendReplyOne(nil, req.Sender, req.ConnID, body), 0)
			}
		}
	}()
	if err := <-ready; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fw.close)
	return fw
}

func (fw *fakeWorker) close() {
	select {
	case <-fw.stop:
	default:
		close(fw.stop)
	}
	<-fw.done
}

type testEnv struct {
	h      *Handler
	srv    *httptest.Server
	reqEP  string
	repEP  string
	cancel context.CancelFunc
}

func newTestEnv(t *testing.T, configure func(*Handler)) *testEnv {
	t.Helper()
	dir := t.TempDir()
	env := &testEnv{reqEP: "ipc://" + filepath.Join(dir, "req"), repEP: "ipc://" + filepath.Join(dir, "rep")}
	env.h = env.provision(t, configure)
	env.srv = httptest.NewServer(serveLikeCaddy(env.h))
	t.Cleanup(func() {
		env.srv.Close()
		env.h.Cleanup()
	})
	return env
}

// serveLikeCaddy serves h as Caddy's server does: the request carries a
// replacer, and a handler error becomes its status (as with no
// handle_errors routes). Unlike Caddy, the error's text is the body, for
// the tests to check. The handler's placeholders are sent as X-Zmq-Pool,
// -Worker, -Retries and -Resends headers, as `header { ... defer }` does.
func serveLikeCaddy(h *Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		repl := caddy.NewReplacer()
		r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
		w := &placeholderHeaders{ResponseWriter: rw, repl: repl}
		if err := h.ServeHTTP(w, r, nil); err != nil {
			status := http.StatusInternalServerError
			var he caddyhttp.HandlerError
			if errors.As(err, &he) {
				status = he.StatusCode
			}
			http.Error(w, err.Error(), status)
		}
	})
}

// placeholderHeaders sets the handler's placeholders as response headers
// when the head goes out.
type placeholderHeaders struct {
	http.ResponseWriter
	repl *caddy.Replacer
	set  bool
}

func (w *placeholderHeaders) WriteHeader(code int) {
	w.setHeaders()
	w.ResponseWriter.WriteHeader(code)
}

func (w *placeholderHeaders) Write(p []byte) (int, error) {
	w.setHeaders()
	return w.ResponseWriter.Write(p)
}

func (w *placeholderHeaders) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *placeholderHeaders) setHeaders() {
	if w.set {
		return
	}
	w.set = true
	for header, name := range map[string]string{
		"X-Zmq-Pool": placeholderPool, "X-Zmq-Worker": placeholderWorkerID,
		"X-Zmq-Retries": placeholderRetries, "X-Zmq-Resends": placeholderResends,
	} {
		w.Header().Set(header, w.repl.ReplaceAll("{"+name+"}", ""))
	}
}

// wantPlaceholders checks the X-Zmq-* headers of resp (serveLikeCaddy).
func wantPlaceholders(t *testing.T, resp *http.Response, pool, worker string, retries, resends int) {
	t.Helper()
	for header, want := range map[string]string{
		"X-Zmq-Pool": pool, "X-Zmq-Worker": worker,
		"X-Zmq-Retries": strconv.Itoa(retries), "X-Zmq-Resends": strconv.Itoa(resends),
	} {
		if got := resp.Header.Get(header); got != want {
			t.Errorf("%s %q, want %q", header, got, want)
		}
	}
}

func (env *testEnv) provision(t *testing.T, configure func(*Handler)) *Handler {
	t.Helper()
	h := &Handler{RequestEndpoint: env.reqEP, ReplyEndpoint: env.repEP, ReplyTimeout: caddy.Duration(testDeadline)}
	if configure != nil {
		configure(h)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	return h
}

// waitForWorker polls until a request gets through (the worker's pipes are up
// and its subscription has reached the SUB socket).
func (env *testEnv) waitForWorker(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(testDeadline)
	// Short tries: a reply published before the worker's PUB saw Caddy's
	// subscription is lost (slow joiner), and that request would otherwise
	// wait for the whole reply timeout.
	client := &http.Client{Timeout: 2 * time.Second}
	for time.Now().Before(deadline) {
		resp, err := client.Get(env.srv.URL + "/__ready")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
	}
	t.Fatal("worker never became reachable")
}

// waitDeadlines polls until the first pool counts every peer of its
// request socket as a zmqx/1 worker, so that its requests get dispatch
// deadlines.
func (env *testEnv) waitDeadlines(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(testDeadline)
	for !env.h.pools[0].transport.control.coversPeers() {
		if time.Now().After(deadline) {
			t.Fatal("the pool never counted its worker as a zmqx/1 one")
		}
		time.Sleep(5 * time.Millisecond) // polling interval, not synchronisation
	}
}

func okReply(body string) [][]byte {
	return [][]byte{[]byte(fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s", len(body), body))}
}

func TestServeRoundTrip(t *testing.T) {
	env := newTestEnv(t, nil)
	fw := startFakeWorker(t, env.reqEP, env.repEP, func(r *mongrel2.Request) [][]byte {
		if r.IsDisconnect() {
			return nil
		}
		return okReply(r.Header("METHOD") + " " + r.Header("URI") + " " + string(r.Body) + " " + r.Header("x-test"))
	})
	env.waitForWorker(t)
	for len(fw.seen) > 0 {
		<-fw.seen
	}
	req, _ := http.NewRequest("POST", env.srv.URL+"/a/b?x=1&y=2", strings.NewReader("payload"))
	req.Header.Set("X-Test", "v1")
	// A client cannot pass itself off as the front end.
	req.Header.Set("METHOD", "DELETE")
	req.Header.Set("X-Forwarded-For", "6.6.6.6")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "POST /a/b?x=1&y=2 payload v1" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	wantPlaceholders(t, resp, "default", "", 0, 0) // no control channel: no worker id
	r := <-fw.seen
	checks := map[string]string{
		"METHOD": "POST", "PATH": "/a/b", "QUERY": "x=1&y=2", "URI": "/a/b?x=1&y=2", "VERSION": "HTTP/1.1",
		"URL_SCHEME": "http", "REMOTE_ADDR": "127.0.0.1", "x-forwarded-for": "127.0.0.1", "PATTERN": "/",
		"content-length": "7", "method": "DELETE",
	}
	for k, v := range checks {
		if got := r.Header(k); got != v {
			t.Errorf("header %s = %q, want %q", k, got, v)
		}
	}
	if r.Sender != env.h.pools[0].sender || r.Path != "/a/b" {
		t.Errorf("sender %q path %q", r.Sender, r.Path)
	}
}

// Every exchange must be garbage once its request is served: nothing
// long-lived (the pending map, worker tables, queues) may keep it. The chain
// through the pooled per-request state that once kept them all is pinned
// down by TestTakeKeepsNoExchangeAlive: here the GC may drop that state from
// its pool, and the chain with it.
func TestServedExchangesAreCollected(t *testing.T) {
	env := newTestEnv(t, nil)
	tr := env.h.pools[0].transport
	var mu sync.Mutex
	var served []weak.Pointer[exchange]
	fw := startFakeWorker(t, env.reqEP, env.repEP, func(r *mongrel2.Request) [][]byte {
		if r.IsDisconnect() {
			return nil
		}
		if id, err := strconv.ParseUint(r.ConnID, 10, 64); err == nil {
			if ex := tr.lookup(id); ex != nil {
				mu.Lock()
				served = append(served, weak.Make(ex))
				mu.Unlock()
			}
		}
		return okReply("ok")
	})
	env.waitForWorker(t)
	drained := make(chan struct{})
	defer close(drained)
	go func() {
		for {
			select {
			case <-fw.seen:
			case <-drained:
				return
			}
		}
	}()
	client := &http.Client{Timeout: testDeadline}
	get := func(i int) {
		resp, err := client.Get(env.srv.URL + "/" + strconv.Itoa(i))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: status %d", i, resp.StatusCode)
		}
	}
	const n = 50
	mu.Lock()
	served = served[:0] // not the readiness probes
	mu.Unlock()
	for i := range n {
		get(i)
	}
	alive := func() int {
		mu.Lock()
		defer mu.Unlock()
		if len(served) < n {
			t.Fatalf("worker saw %d of the %d requests pending", len(served), n)
		}
		k := 0
		for _, w := range served[:n] {
			if w.Value() != nil {
				k++
			}
		}
		return k
	}
	// Requests keep coming between collections, as under load: the pooled
	// per-request state stays in use instead of being dropped by the GC
	// (which would hide a chain hanging off it).
	deadline := time.Now().Add(testDeadline)
	for i := n; ; i++ {
		runtime.GC()
		k := alive()
		if k == 0 {
			break
		}
		if time.Now().After(deadline) || i > 20*n {
			t.Fatalf("%d of %d served exchanges still reachable", k, n)
		}
		get(i)
	}
}

func TestServeConcurrentClientsGetTheirOwnResponse(t *testing.T) {
	env := newTestEnv(t, nil)
	startFakeWorker(t, env.reqEP, env.repEP, func(r *mongrel2.Request) [][]byte {
		return okReply(r.Header("URI"))
	})
	env.waitForWorker(t)
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 5 {
				uri := fmt.Sprintf("/c/%d/%d", i, j)
				resp, err := http.Get(env.srv.URL + uri)
				if err != nil {
					t.Error(err)
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(b) != uri {
					t.Errorf("client %s got %q", uri, b)
				}
			}
		}()
	}
	wg.Wait()
}

func TestServeErrors(t *testing.T) {
	t.Run("503 without worker, quickly", func(t *testing.T) {
		env := newTestEnv(t, func(h *Handler) { h.ReplyTimeout = caddy.Duration(10 * time.Second) })
		start := time.Now()
		resp, err := http.Get(env.srv.URL + "/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 503 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		wantPlaceholders(t, resp, "default", "", 0, 0)
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("503 took %s, as long as a timeout", d)
		}
	})
	t.Run("504 when the worker never answers", func(t *testing.T) {
		env := newTestEnv(t, func(h *Handler) { h.ReplyTimeout = caddy.Duration(300 * time.Millisecond) })
		startFakeWorker(t, env.reqEP, env.repEP, func(r *mongrel2.Request) [][]byte {
			if r.Path == "/__ready" {
				return okReply("")
			}
			return nil
		})
		env.waitForWorker(t)
		resp, err := http.Get(env.srv.URL + "/hang")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 504 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})
	t.Run("413 over max_request_body", func(t *testing.T) {
		env := newTestEnv(t, func(h *Handler) { h.MaxRequestBody = 10 })
		for _, chunked := range []bool{false, true} {
			var body io.Reader = strings.NewReader(strings.Repeat("x", 11))
			if chunked {
				body = io.MultiReader(body) // hides the length: chunked upload
			}
			resp, err := http.Post(env.srv.URL+"/", "text/plain", body)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 413 {
				t.Fatalf("chunked=%v: status %d", chunked, resp.StatusCode)
			}
		}
	})
	t.Run("502 on a malformed reply", func(t *testing.T) {
		env := newTestEnv(t, nil)
		startFakeWorker(t, env.reqEP, env.repEP, func(r *mongrel2.Request) [][]byte {
			if r.Path == "/__ready" {
				return okReply("")
			}
			return [][]byte{[]byte("this is not HTTP\r\n\r\n")}
		})
		env.waitForWorker(t)
		resp, err := http.Get(env.srv.URL + "/bad")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 502 || !strings.Contains(string(b), "bad reply from a worker of pool default") {
			t.Fatalf("status %d body %q", resp.StatusCode, b)
		}
	})
}

func TestDisconnectNotice(t *testing.T) {
	env := newTestEnv(t, nil)
	fw := startFakeWorker(t, env.reqEP, env.repEP, func(r *mongrel2.Request) [][]byte {
		if r.Path == "/__ready" {
			return okReply("")
		}
		return nil
	})
	env.waitForWorker(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", env.srv.URL+"/hang", nil)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
	}()
	var connID string
	deadline := time.After(testDeadline)
	for {
		select {
		case r := <-fw.seen:
			if r.Path == "/hang" {
				connID = r.ConnID
				cancel()
				continue
			}
			// A notice for another request is an earlier one's: a
			// readiness probe that gave up on a loaded machine.
			if r.IsDisconnect() && connID != "" && r.ConnID == connID {
				return
			}
		case <-deadline:
			t.Fatal("no disconnect notice")
		}
	}
}

// TestStreamingFirstFrameArrives: the client reads the first frame of a
// streamed reply while the worker has not finished it (no final chunk yet).
func TestStreamingFirstFrameArrives(t *testing.T) {
	env := newTestEnv(t, nil)
	startFakeWorker(t, env.reqEP, env.repEP, func(r *mongrel2.Request) [][]byte {
		if r.Path == "/__ready" {
			return okReply("")
		}
		return [][]byte{[]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), []byte("5\r\nfirst\r\n")}
	})
	env.waitForWorker(t)
	resp, err := http.Get(env.srv.URL + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "first" {
		t.Fatalf("first frame not streamed: %q %v", buf, err)
	}
}

// TestReplyFanOut: one reply frame naming several connection ids reaches
// every one of them, and ids that are not pending are skipped.
func TestReplyFanOut(t *testing.T) {
	env := newTestEnv(t, nil)
	tr := env.h.pools[0].transport
	a, b := tr.register(0, false), tr.register(0, false)
	defer tr.unregister(a)
	defer tr.unregister(b)
	ids := []string{itoa64(int64(a.id)), "1", itoa64(int64(b.id))}
	msg := mongrel2.AppendReply(nil, tr.cfg.sender, ids, []byte("hello all"))
	f := newFrame(len(msg))
	copy(f.buf, msg)
	tr.dispatch(f)
	for _, ex := range []*exchange{a, b} {
		frames, err := ex.take(nil)
		if err != nil || len(frames) != 1 || string(frames[0].body) != "hello all" {
			t.Fatalf("exchange %d got %d frames, %v", ex.id, len(frames), err)
		}
	}
	if n := f.refs.Load(); n != 2 {
		t.Fatalf("frame references = %d, want 2 (one per exchange it was queued on)", n)
	}
	if n := tr.unknownReplies.Load(); n != 1 {
		t.Fatalf("unknown replies = %d, want 1 (the id that is not pending)", n)
	}
}

func TestReloadSharesSockets(t *testing.T) {
	env := newTestEnv(t, nil)
	startFakeWorker(t, env.reqEP, env.repEP, func(r *mongrel2.Request) [][]byte { return okReply("ok") })
	env.waitForWorker(t)
	// A reload provisions the new config before cleaning up the old one.
	next := env.provision(t, nil)
	if next.pools[0].transport != env.h.pools[0].transport {
		t.Fatal("same endpoints must share the transport")
	}
	old := env.h
	env.h = next
	old.Cleanup()
	resp, err := http.Get(env.srv.URL + "/after-reload")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status after reload %d", resp.StatusCode)
	}
}

func TestNoGoroutineLeakAfterCleanup(t *testing.T) {
	before := runtime.NumGoroutine()
	dir := t.TempDir()
	for i := range 3 {
		h := &Handler{RequestEndpoint: fmt.Sprintf("ipc://%s/r%d", dir, i), ReplyEndpoint: fmt.Sprintf("ipc://%s/p%d", dir, i)}
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		if err := h.Provision(ctx); err != nil {
			t.Fatal(err)
		}
		h.Cleanup()
		cancel()
	}
	deadline := time.Now().Add(testDeadline)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Fatalf("goroutines: %d before, %d after", before, n)
	}
}

// testDeadline bounds polling loops and default reply timeouts in these
// tests: generous, since `make test` runs packages in parallel on 2 cores.
const testDeadline = 30 * time.Second
