package integration

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go/http3"
)

// TestStreamedUploadPausedClient: a client streams a body of unknown
// length (over HTTP/2 and HTTP/3, and chunked over HTTP/1), sends 128 KiB (less than a BODY message) and pauses
// without ending it; the worker's handler reads 64 KiB and answers 201.
// The bytes the client sent reach the worker although no message is full,
// the client gets the 201 while it still holds its body open, and the
// exchange ends (requests_in_flight back to 0) without waiting for the
// client to send more.
func TestStreamedUploadPausedClient(t *testing.T) {
	c := startStreamsCaddy(t, true, nil)
	w := startNamedWorker(t, c, "wk-paused")
	h3 := newHTTP3Client(c.roots)
	defer h3.Transport.(*http3.Transport).Close()
	for _, tc := range []struct {
		name   string
		client *http.Client
		url    func(string) string
	}{
		{"h2", c.Client(modeH2), c.HTTPSURL},
		{"http1", c.Client(modeHTTP), c.HTTPURL},
		// HTTP/3 has no read deadline: the body is closed instead.
		{"h3", h3, c.HTTPSURL},
	} {
		t.Run(tc.name, func(t *testing.T) {
			waitWorker(t, tc.client, tc.url("/echo"), "wk-paused", w)
			waitStreamedUploads(t, c)
			pausedUpload(t, c, tc.client, tc.url)
		})
	}
}

func pausedUpload(t *testing.T, c *caddy, client *http.Client, url func(string) string) {
	defer client.CloseIdleConnections()
	pr, pw := io.Pipe()
	defer pw.Close()
	req, err := http.NewRequest(http.MethodPost, url("/upload?read=65536&status=201"), pr)
	if err != nil {
		t.Fatal(err)
	}
	type answer struct {
		status int
		body   string
		err    error
	}
	answered := make(chan answer, 1)
	go func() {
		resp, err := client.Do(req)
		if err != nil {
			answered <- answer{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		answered <- answer{status: resp.StatusCode, body: string(b), err: err}
	}()
	written := make(chan error, 1)
	go func() {
		_, err := pw.Write(make([]byte, 128<<10))
		written <- err
	}()

	// Well within reply_timeout: before the fix the client got 504 then.
	const answerBound = 15 * time.Second
	select {
	case a := <-answered:
		if a.err != nil || a.status != http.StatusCreated || a.body != "read 65536\n" {
			t.Fatalf("paused upload: %d %q %v, want 201 \"read 65536\"", a.status, a.body, a.err)
		}
	case <-time.After(answerBound):
		t.Fatalf("no answer within %v to a client that sent 128 KiB and paused (the worker needs 64 KiB)", answerBound)
	}
	// The body is still open: the exchange must not wait for it.
	err = poll(detectBound, nil, func() error {
		if n := inFlight(t, c); n != 0 {
			return fmt.Errorf("requests in flight: %v", n)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the exchange did not end while the client held its body open: %v", err)
	}
	select {
	case err := <-written:
		t.Logf("client body write ended: %v", err)
	default:
	}
	// Caddy still serves: the same client's next upload goes through.
	pw.CloseWithError(io.ErrUnexpectedEOF)
	st, _ := getWorker(t, client, url("/echo"))
	if st != http.StatusOK {
		t.Fatalf("GET after the paused upload: %d", st)
	}
}

// inFlight sums caddy_zmq_requests_in_flight over the pools.
func inFlight(t *testing.T, c *caddy) float64 {
	t.Helper()
	sum := 0.0
	for k, v := range scrape(t, c) {
		if strings.HasPrefix(k, "caddy_zmq_requests_in_flight") {
			sum += v
		}
	}
	return sum
}

// waitStreamedUploads polls /zmq/pools until every connection of the pool
// is a live worker of the control channel: only then is a body of unknown
// length streamed rather than buffered.
func waitStreamedUploads(t *testing.T, c *caddy) {
	t.Helper()
	err := poll(detectBound, nil, func() error {
		for _, p := range adminPools(t, c) {
			live := 0
			for _, w := range p.Workers {
				if w.State == "live" {
					live++
				}
			}
			if p.Connections == 0 || int64(live) < p.Connections {
				return fmt.Errorf("pool %s: %d connections, %d live workers", p.Name, p.Connections, live)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
