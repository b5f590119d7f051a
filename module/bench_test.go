package caddyzmq

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	zmq "github.com/pebbe/zmq4"
	"go.uber.org/zap"
)

// BenchmarkServeHTTP measures the module's per-request path against a
// minimal in-process worker over ipc: allocations per request include the
// worker's (one receive buffer, one reply frame).
func BenchmarkServeHTTP(b *testing.B) {
	dir := b.TempDir()
	reqEP, repEP := "ipc://"+filepath.Join(dir, "req"), "ipc://"+filepath.Join(dir, "rep")
	h := &Handler{RequestEndpoint: reqEP, ReplyEndpoint: repEP}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	h.logger = zap.NewNop()
	defer h.Cleanup()

	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		pull, _ := zmq.NewSocket(zmq.PULL)
		pub, _ := zmq.NewSocket(zmq.PUB)
		defer pull.Close()
		defer pub.Close()
		pull.SetLinger(0)
		pub.SetLinger(0)
		pull.SetRcvtimeo(20 * time.Millisecond)
		pub.Connect(repEP)
		pull.Connect(reqEP)
		body := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 14\r\n\r\nHello, world!\n")
		out := make([]byte, 0, 512)
		for {
			select {
			case <-stop:
				return
			default:
			}
			msg, err := pull.RecvBytes(0)
			if err != nil {
				continue
			}
			// "UUID CONNID ...": answer without a full parse.
			i := bytes.IndexByte(msg, ' ')
			j := i + 1 + bytes.IndexByte(msg[i+1:], ' ')
			out = append(out[:0], msg[:i]...)
			out = append(out, ' ')
			out = appendNetstringBytes(out, msg[i+1:j])
			out = append(out, ' ')
			out = append(out, body...)
			pub.SendBytes(out, 0)
		}
	}()
	defer func() { close(stop); <-done }()

	// Wait for the worker's pipes and subscription.
	for deadline := time.Now().Add(testDeadline); ; {
		rec := httptest.NewRecorder()
		h.ReplyTimeout = caddy.Duration(200 * time.Millisecond)
		if err := h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil), nil); err == nil && rec.Code == 200 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("worker not reachable")
		}
	}
	h.ReplyTimeout = caddy.Duration(5 * time.Second)

	// bare: requests without a replacer; replacer: with one, as in Caddy,
	// so the placeholders are set (one per goroutine, reused: Caddy makes
	// one per request, whose map the first placeholder grows).
	for _, withReplacer := range []bool{false, true} {
		name := "bare"
		if withReplacer {
			name = "replacer"
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(16)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				req := httptest.NewRequest("GET", "/hello?x=1", nil)
				req.Header.Set("User-Agent", "bench")
				req.Header.Set("Accept", "*/*")
				if withReplacer {
					req = req.WithContext(context.WithValue(req.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
				}
				w := &discardWriter{h: http.Header{}}
				for pb.Next() {
					clear(w.h)
					w.code = 0
					if err := h.ServeHTTP(w, req, nil); err != nil || w.code != 200 {
						b.Errorf("status %d err %v", w.code, err)
						return
					}
				}
			})
		})
	}
}

func appendNetstringBytes(dst, b []byte) []byte {
	dst = append(dst, itoa(len(b))...)
	dst = append(dst, ':')
	dst = append(dst, b...)
	return append(dst, ',')
}

// discardWriter is a ResponseWriter that keeps only what the benchmark
// checks, so that the recorder's own allocations do not count.
type discardWriter struct {
	h    http.Header
	code int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(code int)        { w.code = code }
