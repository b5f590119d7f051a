package integration

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// target is one front end (Caddy or Mongrel2) with a worker behind it, as
// seen by one kind of client.
type target struct {
	Client *http.Client
	Mode   clientMode
	Base   string // scheme://host:port, no trailing slash
	Worker string // expected X-Worker response header
	Host   string // expected Host the worker sees
	// SetCookie: the worker sends two Set-Cookie headers on every response.
	SetCookie bool
}

func (tg target) URL(path string) string { return tg.Base + path }

var tokenSeq atomic.Uint64

// newToken returns a token unique within the test binary.
func newToken(prefix string) string {
	var b [4]byte
	rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", prefix, tokenSeq.Add(1), hex.EncodeToString(b[:]))
}

// checkCommon checks what every answer of the worker must carry.
func (tg target) checkCommon(t *testing.T, r *response) {
	t.Helper()
	if tg.Mode.H2 && r.ProtoMajor != 2 {
		t.Errorf("%s %s: response protocol %s, want HTTP/2", r.Request.Method, r.Request.URL, r.Proto)
	}
	if got := r.Header.Get("X-Worker"); got != tg.Worker {
		t.Errorf("%s %s: X-Worker %q, want %q", r.Request.Method, r.Request.URL, got, tg.Worker)
	}
}

// checkEcho checks the fields of an echo that depend only on the front end and
// the client.
func (tg target) checkEcho(t *testing.T, e *echoReply, method, path, query string) {
	t.Helper()
	if e.Method != method {
		t.Errorf("worker saw method %q, want %q", e.Method, method)
	}
	if e.Path != path {
		t.Errorf("worker saw path %q, want %q", e.Path, path)
	}
	if e.Query != query {
		t.Errorf("worker saw query %q, want %q", e.Query, query)
	}
	if e.TLS != tg.Mode.TLS {
		t.Errorf("worker saw TLS=%v, want %v", e.TLS, tg.Mode.TLS)
	}
	if e.Proto != tg.Mode.WantProto() {
		t.Errorf("worker saw protocol %q, want %q", e.Proto, tg.Mode.WantProto())
	}
	if !strings.HasPrefix(e.RemoteAddr, "127.0.0.1") {
		t.Errorf("worker saw remote address %q, want 127.0.0.1", e.RemoteAddr)
	}
	if e.Host != tg.Host {
		t.Errorf("worker saw host %q, want %q", e.Host, tg.Host)
	}
}

// basicSuite: GET and POST with bodies, headers both ways, query strings,
// status codes. Every front end and worker combination must pass it.
func basicSuite(t *testing.T, tg target) {
	t.Run("GET with query", func(t *testing.T) {
		tok := newToken("get")
		query := "a=1&b=two%20words&empty=&token=" + tok
		r := mustDo(t, tg.Client, http.MethodGet, tg.URL("/echo/some/path?"+query), nil, http.Header{"X-Token": {tok}})
		if r.StatusCode != http.StatusOK {
			t.Fatalf("status %s, want 200; body %q", r.Status, tail(string(r.Body), 500))
		}
		tg.checkCommon(t, r)
		e := decodeEcho(t, r)
		tg.checkEcho(t, e, http.MethodGet, "/echo/some/path", query)
		if e.Body != "" {
			t.Errorf("worker saw body %q on a GET", e.Body)
		}
		if got := r.Header.Get("Content-Type"); got != "application/json" {
			t.Errorf("Content-Type %q, want application/json", got)
		}
	})

	t.Run("POST with body", func(t *testing.T) {
		tok := newToken("post")
		body := "hello, wörld\r\nsecond line " + tok + "\n\x00\x01 end"
		r := mustDo(t, tg.Client, http.MethodPost, tg.URL("/submit?token="+tok), strings.NewReader(body),
			http.Header{"Content-Type": {"text/plain; charset=utf-8"}, "X-Token": {tok}})
		if r.StatusCode != http.StatusOK {
			t.Fatalf("status %s, want 200; body %q", r.Status, tail(string(r.Body), 500))
		}
		tg.checkCommon(t, r)
		e := decodeEcho(t, r)
		tg.checkEcho(t, e, http.MethodPost, "/submit", "token="+tok)
		if e.Body != body {
			t.Errorf("worker saw body %q, want %q", e.Body, body)
		}
		if got := e.Header("content-type"); got != "text/plain; charset=utf-8" {
			t.Errorf("worker saw content-type %q", got)
		}
	})

	t.Run("POST empty body", func(t *testing.T) {
		r := mustDo(t, tg.Client, http.MethodPost, tg.URL("/empty"), http.NoBody, nil)
		if r.StatusCode != http.StatusOK {
			t.Fatalf("status %s, want 200", r.Status)
		}
		e := decodeEcho(t, r)
		tg.checkEcho(t, e, http.MethodPost, "/empty", "")
		if e.Body != "" {
			t.Errorf("worker saw body %q, want none", e.Body)
		}
	})

	t.Run("PUT and DELETE", func(t *testing.T) {
		for _, m := range []string{http.MethodPut, http.MethodDelete, http.MethodPatch} {
			r := mustDo(t, tg.Client, m, tg.URL("/things/42"), strings.NewReader(`{"m":"`+m+`"}`),
				http.Header{"Content-Type": {"application/json"}})
			if r.StatusCode != http.StatusOK {
				t.Fatalf("%s: status %s, want 200", m, r.Status)
			}
			e := decodeEcho(t, r)
			tg.checkEcho(t, e, m, "/things/42", "")
			if e.Body != `{"m":"`+m+`"}` {
				t.Errorf("%s: worker saw body %q", m, e.Body)
			}
		}
	})

	t.Run("headers both ways", func(t *testing.T) {
		tok := newToken("hdr")
		r := mustDo(t, tg.Client, http.MethodGet, tg.URL("/headers"), nil, http.Header{
			"X-Token":         {tok},
			"X-Custom-Header": {"value with spaces, and a comma"},
			"X-Multi":         {"first", "second"},
			"Accept":          {"application/json"},
			"User-Agent":      {"caddy-zmq-integration/1"},
		})
		if r.StatusCode != http.StatusOK {
			t.Fatalf("status %s, want 200", r.Status)
		}
		tg.checkCommon(t, r)
		if got := r.Header.Get("X-Echo-Token"); got != tok {
			t.Errorf("response X-Echo-Token %q, want %q", got, tok)
		}
		if tg.SetCookie {
			if got := r.Header.Values("Set-Cookie"); len(got) != 2 || got[0] != "a=1; Path=/" || got[1] != "b=2; Path=/" {
				t.Errorf("response Set-Cookie %q, want [a=1; Path=/ b=2; Path=/]", got)
			}
		}
		e := decodeEcho(t, r)
		for name, want := range map[string]string{
			"x-token":         tok,
			"x-custom-header": "value with spaces, and a comma",
			"x-multi":         "first, second",
			"accept":          "application/json",
			"user-agent":      "caddy-zmq-integration/1",
		} {
			if got := e.Header(name); got != want {
				t.Errorf("worker saw %s: %q, want %q (all headers: %v)", name, got, want, e.Headers)
			}
		}
	})

	t.Run("status codes", func(t *testing.T) {
		for _, code := range []int{200, 201, 202, 301, 400, 404, 418, 500} {
			r := mustDo(t, tg.Client, http.MethodGet, tg.URL("/status?status="+strconv.Itoa(code)), nil, nil)
			if r.StatusCode != code {
				t.Errorf("?status=%d: got %s", code, r.Status)
				continue
			}
			tg.checkCommon(t, r)
			e := decodeEcho(t, r)
			if e.Query != "status="+strconv.Itoa(code) {
				t.Errorf("?status=%d: worker saw query %q", code, e.Query)
			}
		}
		r := mustDo(t, tg.Client, http.MethodGet, tg.URL("/status?status=204"), nil, nil)
		if r.StatusCode != http.StatusNoContent || len(r.Body) != 0 {
			t.Errorf("?status=204: got %s with %d body bytes", r.Status, len(r.Body))
		}
	})

	t.Run("HEAD", func(t *testing.T) {
		r := mustDo(t, tg.Client, http.MethodHead, tg.URL("/echo"), nil, nil)
		if r.StatusCode != http.StatusOK {
			t.Fatalf("status %s, want 200", r.Status)
		}
		tg.checkCommon(t, r)
		if len(r.Body) != 0 {
			t.Errorf("HEAD answered with %d body bytes", len(r.Body))
		}
		// The connection must still be usable (no stray body bytes).
		r = mustDo(t, tg.Client, http.MethodGet, tg.URL("/after-head"), nil, nil)
		if r.StatusCode != http.StatusOK {
			t.Fatalf("GET after HEAD: %s", r.Status)
		}
		decodeEcho(t, r)
	})
}

// extendedSuite: streaming, large bodies both ways, keep-alive reuse.
// testworker only.
func extendedSuite(t *testing.T, tg target) {
	t.Run("streamed reply", func(t *testing.T) {
		const n = 50
		r := mustDo(t, tg.Client, http.MethodGet, tg.URL("/stream?n="+strconv.Itoa(n)), nil, nil)
		if r.StatusCode != http.StatusOK {
			t.Fatalf("status %s", r.Status)
		}
		var want strings.Builder
		for i := 0; i < n; i++ {
			fmt.Fprintf(&want, "chunk %d\n", i)
		}
		if string(r.Body) != want.String() {
			t.Errorf("streamed body %q, want %q", tail(string(r.Body), 300), tail(want.String(), 300))
		}
	})

	t.Run("streamed reply arrives incrementally", func(t *testing.T) {
		// The first chunk must reach the client before the last one is
		// written (the worker pauses 300ms between chunks).
		req, _ := http.NewRequest(http.MethodGet, tg.URL("/stream?n=3&delay=300ms"), nil)
		start := time.Now()
		resp, err := tg.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		buf := make([]byte, len("chunk 0\n"))
		if _, err := io.ReadFull(resp.Body, buf); err != nil {
			t.Fatalf("first chunk: %v", err)
		}
		first := time.Since(start)
		rest, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("rest: %v", err)
		}
		all := time.Since(start)
		if string(buf)+string(rest) != "chunk 0\nchunk 1\nchunk 2\n" {
			t.Errorf("body %q", string(buf)+string(rest))
		}
		// The worker spends 600ms between the first and the last chunk;
		// a buffered reply would arrive all at once.
		if all-first < 200*time.Millisecond {
			t.Errorf("first chunk after %v, whole body after %v: the reply was buffered, not streamed", first, all)
		}
	})

	t.Run("big reply", func(t *testing.T) {
		const n = 5<<20 + 123
		r := mustDo(t, tg.Client, http.MethodGet, tg.URL("/big?bytes="+strconv.Itoa(n)), nil, nil)
		if r.StatusCode != http.StatusOK {
			t.Fatalf("status %s", r.Status)
		}
		if len(r.Body) != n {
			t.Fatalf("got %d bytes, want %d", len(r.Body), n)
		}
		const pattern = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/\n"
		for i := 0; i < n; i += len(pattern) {
			chunk := r.Body[i:min(i+len(pattern), n)]
			if !bytes.Equal(chunk, []byte(pattern[:len(chunk)])) {
				t.Fatalf("body differs at byte %d: %q", i, chunk)
			}
		}
	})

	t.Run("big upload", func(t *testing.T) {
		body := make([]byte, 3<<20+7)
		rand.Read(body)
		sum := sha256.Sum256(body)
		r := mustDo(t, tg.Client, http.MethodPost, tg.URL("/upload"), bytes.NewReader(body),
			http.Header{"Content-Type": {"application/octet-stream"}})
		if r.StatusCode != http.StatusOK {
			t.Fatalf("status %s: %q", r.Status, tail(string(r.Body), 300))
		}
		e := decodeEcho(t, r)
		if e.BodyLen != len(body) || e.BodySHA256 != hex.EncodeToString(sum[:]) {
			t.Errorf("worker got %d bytes (sha256 %s), want %d (%x)", e.BodyLen, e.BodySHA256, len(body), sum)
		}
	})

	t.Run("chunked upload", func(t *testing.T) {
		// io.MultiReader hides the length: HTTP/1.1 sends it chunked,
		// HTTP/2 as DATA frames without content-length.
		body := bytes.Repeat([]byte("chunked upload\n"), 10000)
		r := mustDo(t, tg.Client, http.MethodPost, tg.URL("/upload-chunked"),
			io.MultiReader(bytes.NewReader(body[:1000]), bytes.NewReader(body[1000:])), nil)
		if r.StatusCode != http.StatusOK {
			t.Fatalf("status %s: %q", r.Status, tail(string(r.Body), 300))
		}
		e := decodeEcho(t, r)
		sum := sha256.Sum256(body)
		if e.BodyLen != len(body) || e.BodySHA256 != hex.EncodeToString(sum[:]) {
			t.Errorf("worker got %d bytes, want %d", e.BodyLen, len(body))
		}
	})

	t.Run("sequential requests on one connection", func(t *testing.T) {
		for i := 0; i < 50; i++ {
			tok := newToken("seq")
			r := mustDo(t, tg.Client, http.MethodGet, tg.URL("/seq?i="+strconv.Itoa(i)), nil, http.Header{"X-Token": {tok}})
			if r.StatusCode != http.StatusOK || r.Header.Get("X-Echo-Token") != tok {
				t.Fatalf("request %d: %s, token %q want %q", i, r.Status, r.Header.Get("X-Echo-Token"), tok)
			}
		}
	})
}

// concurrentClients runs n clients at once, each making a few requests with a
// unique token, and checks every client got exactly its own responses.
// newClient returns the client for client i (shared or not).
func concurrentClients(t *testing.T, tg target, n, perClient int, clientFor func(i int) *http.Client) {
	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
		mu    sync.Mutex
		errs  []string
	)
	fail := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		errs = append(errs, fmt.Sprintf(format, args...))
	}
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			client := clientFor(i)
			<-start
			for j := 0; j < perClient; j++ {
				tok := newToken(fmt.Sprintf("c%d-%d", i, j))
				body := "body of " + tok
				r, err := do(client, http.MethodPost, tg.URL("/concurrent/"+tok+"?token="+tok),
					strings.NewReader(body), http.Header{"X-Token": {tok}})
				if err != nil {
					fail("client %d request %d: %v", i, j, err)
					return
				}
				if r.StatusCode != http.StatusOK {
					fail("client %d request %d: %s", i, j, r.Status)
					return
				}
				e, err := decodeEchoErr(r)
				if err != nil {
					fail("client %d request %d: %v", i, j, err)
					return
				}
				if e.Path != "/concurrent/"+tok || e.Query != "token="+tok || e.Body != body ||
					e.Header("x-token") != tok || r.Header.Get("X-Echo-Token") != tok {
					fail("client %d request %d: got someone else's response: path %q query %q body %q x-token %q echo-token %q",
						i, j, e.Path, e.Query, e.Body, e.Header("x-token"), r.Header.Get("X-Echo-Token"))
					return
				}
				if tg.Mode.H2 && r.ProtoMajor != 2 {
					fail("client %d: %s, want HTTP/2", i, r.Proto)
					return
				}
			}
		}(i)
	}
	close(start)
	wg.Wait()
	if len(errs) > 0 {
		if len(errs) > 20 {
			errs = append(errs[:20], fmt.Sprintf("... and %d more", len(errs)-20))
		}
		t.Errorf("%d of %d clients failed:\n%s", len(errs), n, strings.Join(errs, "\n"))
	}
}

func decodeEchoErr(r *response) (*echoReply, error) {
	var e echoReply
	if err := jsonUnmarshal(r.Body, &e); err != nil {
		return nil, fmt.Errorf("not an echo: %v: %q", err, tail(string(r.Body), 300))
	}
	return &e, nil
}
