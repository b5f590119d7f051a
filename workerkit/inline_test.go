package workerkit

import (
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
)

// A slow handler that runs inline holds up neither the requests behind it
// nor its own disconnect notice: the watchdog hands the request socket to
// another goroutine. No durations are asserted, only the order of events:
// the fast request is answered, and the notice is read, while the slow
// handler still blocks.
func TestSlowInlineHandler(t *testing.T) {
	f := newTestFE(t)
	var mu sync.Mutex
	inline := map[string]bool{}
	// Every request runs inline, however long handlers take here (the race
	// detector slows them down), and restored once the worker is gone
	// (cleanups run last registered first).
	testHookInline = func(conn string) { mu.Lock(); inline[conn] = true; mu.Unlock() }
	inlineCostMax = time.Hour
	t.Cleanup(func() { testHookInline, inlineCostMax = nil, 50*time.Microsecond })
	ranInline := func(conn string) bool { mu.Lock(); defer mu.Unlock(); return inline[conn] }

	started := make(chan string, 4)
	cancelled := make(chan string, 4)
	release := make(chan struct{})
	h := func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/slow":
			started <- r.URL.Path
			<-release
		case "/until-gone":
			started <- r.URL.Path
			<-r.Context().Done()
			cancelled <- r.URL.Path
			return
		}
		_, _ = io.WriteString(w, "done "+r.URL.Path)
	}
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: http.HandlerFunc(h)})

	f.request("1", treq{uri: "/slow"})
	eq(t, "started", recvWithin(t, started, "slow handler"), "/slow")
	if !ranInline("1") {
		t.Fatal("the slow request did not run inline: the test proves nothing")
	}
	// Behind it: answered while the slow handler still blocks.
	f.request("2", treq{uri: "/fast"})
	eq(t, "reply behind a slow inline handler", string(f.readReply("2", "GET").body), "done /fast")

	close(release)
	eq(t, "slow reply", string(f.readReply("1", "GET").body), "done /slow")

	// A request that runs until its client goes away: its notice comes on
	// the socket the handler's goroutine was reading.
	f.request("4", treq{uri: "/until-gone"})
	eq(t, "started", recvWithin(t, started, "handler start"), "/until-gone")
	f.send(mongrel2.AppendDisconnect(nil, f.sender, "4"))
	eq(t, "cancelled", recvWithin(t, cancelled, "cancellation"), "/until-gone")
	if !ranInline("4") {
		t.Fatal("the request waiting for its notice did not run inline: the test proves nothing")
	}
}

// Which requests run inline: cheap handlers lately, no ACK over the control
// channel, no streamed body, no WebSocket handshake; one very slow run
// counts only up to costCap.
func TestInlineFits(t *testing.T) {
	get := func(method string) *mongrel2.Request {
		f := &testFE{sender: testSender}
		req, err := mongrel2.ParseRequest(f.frame("1", treq{method: method}))
		if err != nil {
			t.Fatal(err)
		}
		return req
	}
	tests := []struct {
		name     string
		runs     []time.Duration // noted before the check
		stream   bool
		window   int64
		method   string
		noInline bool
		want     bool
	}{
		{name: "fresh worker", want: true},
		{name: "Worker.NoInline", noInline: true, want: false},
		{name: "cheap handlers", runs: []time.Duration{5 * time.Microsecond, 8 * time.Microsecond}, want: true},
		{name: "streamed upload", stream: true, want: false},
		{name: "acknowledged over the control channel", window: 1 << 20, want: false},
		{name: "WebSocket handshake", method: "WEBSOCKET_HANDSHAKE", want: false},
		{name: "one slow run", runs: []time.Duration{time.Second}, want: false},
		{name: "slow handlers", runs: []time.Duration{time.Millisecond, time.Millisecond, time.Millisecond}, want: false},
		{name: "a slow run long ago", runs: append([]time.Duration{time.Hour}, repeat(time.Microsecond, 200)...), want: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := &server{}
			for _, d := range tc.runs {
				s.noteCost(d)
			}
			if s.handlerCost.Load() > int64(costCap) {
				t.Fatalf("average %v above costCap", time.Duration(s.handlerCost.Load()))
			}
			method := tc.method
			if method == "" {
				method = "GET"
			}
			fl := &flight{req: get(method), stream: tc.stream, window: tc.window,
				inlineOK: inlineCandidate(tc.noInline, tc.window, tc.stream, method)}
			if got := s.inlineFits(fl); got != tc.want {
				t.Errorf("inlineFits = %v, want %v (average %v)", got, tc.want, time.Duration(s.handlerCost.Load()))
			}
		})
	}
}

func repeat(d time.Duration, n int) []time.Duration {
	r := make([]time.Duration, n)
	for i := range r {
		r[i] = d
	}
	return r
}
