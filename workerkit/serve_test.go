package workerkit

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// The one-call Serve stops on SIGINT after finishing its work.
func TestServeStopsOnSignal(t *testing.T) {
	// os/signal starts its watcher goroutine once per process; start it
	// before counting goroutines.
	warm := make(chan os.Signal, 1)
	signal.Notify(warm, syscall.SIGUSR2)
	signal.Stop(warm)

	f := newTestFE(t)
	base := runtime.NumGoroutine()
	release := make(chan struct{})
	h := func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		_, _ = io.WriteString(w, "ok "+r.URL.Path)
	}
	errc := make(chan error, 1)
	go func() { errc <- Serve(http.HandlerFunc(h), f.fe) }()

	// A round trip proves Serve is up, and so its signal handler installed.
	f.request("1", treq{uri: "/fast"})
	eq(t, "body", string(f.readReply("1", "GET").body), "ok /fast")
	f.request("2", treq{uri: "/slow"})
	must(t, syscall.Kill(os.Getpid(), syscall.SIGINT))
	waitUntil(t, "the worker to stop taking work", func() bool { return !f.pushHasPeer() })
	close(release)
	eq(t, "in-flight reply", string(f.readReply("2", "GET").body), "ok /slow")
	if err := recvWithin(t, errc, "Serve to return"); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	waitGoroutines(t, base)
}

// BenchmarkRoundTrip measures front end -> worker -> front end with a
// window of requests in flight (the test front end is in the numbers too).
func BenchmarkRoundTrip(b *testing.B) {
	for _, window := range []int{1, 64} {
		b.Run("inflight="+strconv.Itoa(window), func(b *testing.B) {
			f := newTestFE(b)
			h := func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "Hello, world!\n") }
			w := &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: http.HandlerFunc(h), Logger: slog.New(slog.DiscardHandler)}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- w.Serve(ctx) }()
			defer func() { cancel(); <-done }()
			frames := make([][]byte, window)
			for i := range frames {
				frames[i] = f.frame(strconv.Itoa(i), treq{})
			}
			f.send(frames[0])
			if _, err := f.next("0", 10*time.Second); err != nil {
				b.Fatal(err)
			}
			must(b, f.sub.SetRcvtimeo(10*time.Second))
			b.ReportAllocs()
			b.ResetTimer()
			sent, recvd := 0, 0
			for recvd < b.N {
				for sent < b.N && sent-recvd < window {
					f.send(frames[sent%window])
					sent++
				}
				if _, err := f.sub.RecvBytes(0); err != nil {
					b.Fatal(err)
				}
				recvd++
			}
		})
	}
}
