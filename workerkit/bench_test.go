package workerkit

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"syscall"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
)

// browserHeaders are what a browser's GET typically carries, as the front
// end forwards them (lower-case names).
var browserHeaders = []mongrel2.Field{
	{Name: "user-agent", Values: []string{"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"}},
	{Name: "accept", Values: []string{"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}},
	{Name: "accept-language", Values: []string{"en-US,en;q=0.5"}},
	{Name: "accept-encoding", Values: []string{"gzip, deflate, br, zstd"}},
	{Name: "cookie", Values: []string{"session=0123456789abcdef; theme=dark"}},
	{Name: "referer", Values: []string{"https://example.com/"}},
	{Name: "sec-fetch-dest", Values: []string{"document"}},
	{Name: "sec-fetch-mode", Values: []string{"navigate"}},
	{Name: "sec-fetch-site", Values: []string{"same-origin"}},
	{Name: "x-forwarded-for", Values: []string{"192.0.2.7"}},
}

// BenchmarkRequestPath measures the worker's own per-request work without
// ZeroMQ: parse the frame, build the http.Request, run the handler on its
// goroutine, render the reply frame. The allocations here are all the
// worker's (libzmq's receive adds its own, and the front end's side more).
func BenchmarkRequestPath(b *testing.B) {
	f := &testFE{t: b, sender: testSender}
	hello := func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "Hello, world!\n") }
	typed := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "Hello, world!\n")
	}
	deadline := strconv.FormatInt(time.Now().Add(time.Hour).UnixMilli(), 10)
	for _, bc := range []struct {
		name string
		h    http.HandlerFunc
		q    treq
		ctl  bool
	}{
		{"minimal", hello, treq{}, false},
		{"content-type set", typed, treq{}, false},
		{"browser", hello, treq{headers: browserHeaders}, false},
		{"browser+window+deadline", hello, treq{headers: browserHeaders, window: testWindow, deadline: deadline}, true},
		{"post 1KiB", hello, treq{method: "POST", body: string(make([]byte, 1024))}, false},
	} {
		b.Run(bc.name, func(b *testing.B) {
			base, cancel := context.WithCancel(context.Background())
			defer cancel()
			s := &server{
				h:        bc.h,
				log:      slog.New(slog.DiscardHandler),
				maxConc:  1,
				sem:      make(chan struct{}, 1),
				stop:     make(chan struct{}),
				idle:     make(chan *flight),
				base:     base,
				inflight: make(map[flightKey]*flight),
				members:  make(map[*member]struct{}),
			}
			fe := &frontEndConn{s: s, log: s.log, out: make(chan *frame, 4), dead: make(chan struct{})}
			fe.active.Store(true)
			if bc.ctl {
				// A control connection that is up, whose owner sends
				// nothing: the ACKs are taken off the queue below.
				fe.ctl = newCtlConn(fe)
				fe.ctl.connected.Store(true)
			}
			msg := f.frame("12345", bc.q)
			buf := make([]byte, len(msg))
			b.ReportAllocs()
			cpu0 := cpuTime()
			for b.Loop() {
				copy(buf, msg) // what RecvBytes hands over, without its allocation
				s.sem <- struct{}{}
				if fl := s.admit(fe, buf); fl != nil {
					s.start(fl)
				}
				putFrame(<-fe.out)
				if bc.ctl {
					fe.ctl.ackMu.Lock()
					clear(fe.ctl.acks)
					fe.ctl.acks = fe.ctl.acks[:0]
					fe.ctl.ackMu.Unlock()
				}
			}
			s.sem <- struct{}{} // the last handler has finished
			close(s.stop)       // and its goroutine exits
			// CPU time is steadier than wall time on a busy machine.
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// cpuTime is the CPU time the process has used, in nanoseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// BenchmarkRoundTripControl is BenchmarkRoundTrip with the control channel:
// every request carries ZMQX_WINDOW and ZMQX_DEADLINE, so it is
// acknowledged. It reports how many ids an ACK message carried on average.
func BenchmarkRoundTripControl(b *testing.B) {
	for _, window := range []int{1, 64} {
		b.Run("inflight="+strconv.Itoa(window), func(b *testing.B) {
			f := newTestFECtl(b)
			h := func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "Hello, world!\n") }
			w := &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: http.HandlerFunc(h), Logger: slog.New(slog.DiscardHandler)}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- w.Serve(ctx) }()
			defer func() { cancel(); <-done }()
			deadline := strconv.FormatInt(time.Now().Add(time.Hour).UnixMilli(), 10)
			frames := make([][]byte, window)
			for i := range frames {
				frames[i] = f.frame(strconv.Itoa(i), treq{window: testWindow, deadline: deadline})
			}
			f.ctlWait("HELLO", func(m ctlMsg) bool { return m.body != "HB" })
			f.send(frames[0])
			if _, err := f.next("0", 10*time.Second); err != nil {
				b.Fatal(err)
			}
			must(b, f.sub.SetRcvtimeo(10*time.Second))
			acks, ids := 0, 0
			drainCtl := func() {
				for {
					parts, err := f.ctl.RecvMessageBytes(zmq.DONTWAIT)
					if err != nil {
						return
					}
					if n := len(ackIDs(ctlMsg{body: string(parts[len(parts)-1])})); n > 0 {
						acks++
						ids += n
					}
				}
			}
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
				drainCtl()
			}
			b.StopTimer()
			if acks > 0 {
				b.ReportMetric(float64(ids)/float64(acks), "ids/ACK")
			}
		})
	}
}
