package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// newHTTP3Client speaks HTTP/3 only, to 127.0.0.1 whatever the URL's host,
// verifying Caddy's certificate against its local CA.
func newHTTP3Client(roots *x509.CertPool) *http.Client {
	tr := &http3.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS13},
		QUICConfig:      &quic.Config{MaxIdleTimeout: requestTimeout},
		Dial: func(ctx context.Context, addr string, tlsCfg *tls.Config, cfg *quic.Config) (*quic.Conn, error) {
			_, port, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			return quic.DialAddr(ctx, net.JoinHostPort("127.0.0.1", port), tlsCfg, cfg)
		},
	}
	return &http.Client{Transport: tr, Timeout: 2 * requestTimeout}
}

// TestHTTP3: an HTTP/3 (QUIC) client against bin/caddy with
// caddyfiles/streams.Caddyfile over HTTPS (internal CA, chain verified) and
// the echo example worker: an ordinary response, a streamed one whose first
// line arrives while the worker still holds the stream open, a download and
// an upload of several MiB with their checksums.
func TestHTTP3(t *testing.T) {
	c := startStreamsCaddy(t, true, nil)
	w := startEchoWorker(t, c, "echo")
	waitControlWorkers(t, c, 1, w)
	client := newHTTP3Client(c.roots)
	defer client.Transport.(*http3.Transport).Close()
	waitStatusOK(t, client, c.HTTPSURL("/big?bytes=10"), nil, c.proc, w)

	t.Run("response", func(t *testing.T) {
		r := mustDo(t, client, http.MethodGet, c.HTTPSURL("/anything?x=1"), nil, http.Header{"X-Test": {"h3"}})
		if r.StatusCode != http.StatusOK || r.ProtoMajor != 3 {
			t.Fatalf("GET /anything: %s over %s", r.Status, r.Proto)
		}
		var e struct {
			Proto  string      `json:"proto"`
			TLS    bool        `json:"tls"`
			Header http.Header `json:"header"`
		}
		if err := json.Unmarshal(r.Body, &e); err != nil {
			t.Fatalf("not an echo: %v %q", err, r.Body)
		}
		if e.Proto != "HTTP/3.0" || !e.TLS || e.Header.Get("X-Test") != "h3" {
			t.Errorf("the worker saw proto %q, TLS %v, X-Test %q; want HTTP/3.0, true, h3", e.Proto, e.TLS, e.Header.Get("X-Test"))
		}
	})

	t.Run("streamed", func(t *testing.T) {
		// Line 1 is flushed at once, line 2 only a minute later: line 1
		// arriving proves the reply is streamed, not buffered.
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.HTTPSURL("/stream?n=2&ms=60000"), nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 3 {
			t.Fatalf("GET /stream: %s over %s", resp.Status, resp.Proto)
		}
		line := make(chan string, 1)
		go func() {
			s, _ := bufio.NewReader(resp.Body).ReadString('\n')
			line <- s
		}()
		select {
		case s := <-line:
			if !strings.HasPrefix(s, "line 1 of 2 ") {
				t.Fatalf("first line %q", s)
			}
		case <-time.After(lineTimeout):
			t.Fatalf("no line within %v: the stream is not passed on as it comes", lineTimeout)
		}
		// The client leaves: the worker's request context must end.
		cancel()
		w.MustWaitFor("stream: client went away after 1 lines", lineTimeout)
	})

	t.Run("large download", func(t *testing.T) {
		const n = 8 * sMiB
		r := mustDo(t, client, http.MethodGet, c.HTTPSURL(fmt.Sprintf("/big?bytes=%d", n)), nil, nil)
		if r.StatusCode != http.StatusOK || r.ProtoMajor != 3 {
			t.Fatalf("GET /big: %s over %s", r.Status, r.Proto)
		}
		want := sha256.Sum256(bytes.Repeat([]byte(bigPattern), n/len(bigPattern)+1)[:n])
		if got := sha256.Sum256(r.Body); len(r.Body) != n || got != want {
			t.Fatalf("GET /big: %d bytes, sha256 %x; want %d bytes, sha256 %x", len(r.Body), got, n, want)
		}
	})

	t.Run("large upload", func(t *testing.T) {
		body := make([]byte, 6*sMiB)
		rand.Read(body)
		sum := sha256.Sum256(body)
		r := mustDo(t, client, http.MethodPost, c.HTTPSURL("/upload"), bytes.NewReader(body), nil)
		if r.StatusCode != http.StatusOK || r.ProtoMajor != 3 {
			t.Fatalf("POST /upload: %s over %s: %q", r.Status, r.Proto, tail(string(r.Body), 300))
		}
		var got struct {
			Bytes  int64  `json:"bytes"`
			SHA256 string `json:"sha256"`
		}
		if err := json.Unmarshal(r.Body, &got); err != nil {
			t.Fatalf("POST /upload: %v %q", err, r.Body)
		}
		if got.Bytes != int64(len(body)) || got.SHA256 != hex.EncodeToString(sum[:]) {
			t.Fatalf("the worker got %d bytes, sha256 %s; sent %d, %x", got.Bytes, got.SHA256, len(body), sum)
		}
	})
}
