package workerkit

import (
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// bindEndpoints returns a front end in bind mode on two free local ports.
func bindEndpoints(t *testing.T) FrontEnd {
	t.Helper()
	var eps [2]string
	var ls [2]net.Listener
	for i := range ls {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		must(t, err)
		ls[i], eps[i] = l, "tcp://"+l.Addr().String()
	}
	for _, l := range ls {
		must(t, l.Close())
	}
	return FrontEnd{Requests: eps[0], Replies: eps[1], Bind: true}
}

type bindWait struct{ peers, subs int64 }

// bindWaitHook routes testHookBindWait to a channel. Set it before the
// worker starts; it is reset after the worker has stopped.
func bindWaitHook(t *testing.T) <-chan bindWait {
	c := make(chan bindWait, 1024)
	testHookBindWait = func(index int, peers, subs int64) {
		select {
		case c <- bindWait{peers, subs}:
		default:
		}
	}
	t.Cleanup(func() { testHookBindWait = nil })
	return c
}

// subsHook routes testHookSubs to a channel (like bindWaitHook).
func subsHook(t *testing.T) <-chan int {
	c := make(chan int, 1024)
	testHookSubs = func(index, subs int) {
		select {
		case c <- subs:
		default:
		}
	}
	t.Cleanup(func() { testHookSubs = nil })
	return c
}

// drain empties a hook channel: what follows is news.
func drain[T any](c <-chan T) {
	for {
		select {
		case <-c:
		default:
			return
		}
	}
}

// waitBindWait waits until the worker waits for subscriptions with these
// counts.
func waitBindWait(t *testing.T, c <-chan bindWait, want bindWait) {
	t.Helper()
	for recvWithin(t, c, "the worker to wait with "+strconv.FormatInt(want.peers, 10)+" connections and "+
		strconv.FormatInt(want.subs, 10)+" subscriptions") != want {
	}
}

var pathHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	_, _ = io.WriteString(w, "ok "+r.URL.Path)
})

// expectOK reads the replies of conns and checks that each echoes its path.
func (f *testFE) expectOK(t *testing.T, conns ...string) {
	t.Helper()
	for _, c := range conns {
		r := f.readReply(c, "GET")
		eq(t, "reply to "+c, string(r.body), "ok /"+c)
	}
}

// A worker in bind mode: front ends connect to it, and none loses a reply,
// even when its requests arrive before its subscription does.
func TestBindMode(t *testing.T) {
	waits, subs := bindWaitHook(t), subsHook(t)
	fe := bindEndpoints(t)
	startWorker(t, &Worker{FrontEnds: []FrontEnd{fe}, Handler: pathHandler})

	// A front end that connects its PUSH first and sends at once: the
	// requests wait in the worker's queue until the SUB has subscribed.
	a := newTestFEConnect(t, fe, "sender-a")
	var conns []string
	for i := range 20 {
		c := strconv.Itoa(1 + i)
		a.request(c, treq{uri: "/" + c})
		conns = append(conns, c)
	}
	a.connectSub()
	a.expectOK(t, conns...)

	// A second front end (another Caddy) connects while the first is
	// served. Its requests arrive before its subscription: the worker
	// waits for it, holding the first front end's requests meanwhile.
	b := newTestFEConnect(t, fe, "sender-b")
	b.request("100", treq{uri: "/100"})
	waitBindWait(t, waits, bindWait{peers: 2, subs: 1})
	a.request("21", treq{uri: "/21"})
	for i := range 20 {
		b.request(strconv.Itoa(101+i), treq{uri: "/" + strconv.Itoa(101+i)})
	}
	b.connectSub()
	b.expectOK(t, "100")
	for i := range 20 {
		b.expectOK(t, strconv.Itoa(101+i))
	}
	a.expectOK(t, "21")
	// Each front end got only its own replies (its SUB filters by sender).
	for _, f := range []*testFE{a, b} {
		for conn, q := range f.pending {
			if len(q) > 0 {
				t.Errorf("%s: unexpected replies for conn %s: %q", f.sender, conn, q)
			}
		}
	}

	// A front end that leaves does not hold up the others; its
	// subscription goes with it.
	drain(subs)
	b.close()
	for recvWithin(t, subs, "the subscription of the front end that left to go") != 1 {
	}
	a.request("22", treq{uri: "/22"})
	a.expectOK(t, "22")

	// A peer that connects to the request socket and never subscribes
	// holds the work up for bindJoinGrace at most.
	drain(waits)
	c := newTestFEConnect(t, fe, "sender-c")
	c.waitWorker()
	t0 := time.Now()
	a.request("23", treq{uri: "/23"})
	waitBindWait(t, waits, bindWait{peers: 2, subs: 1})
	a.expectOK(t, "23")
	if d := time.Since(t0); d > bindJoinGrace+2*time.Second {
		t.Errorf("reply after %v with a peer that never subscribes; want about %v", d, bindJoinGrace)
	}
	t.Logf("with a peer that never subscribes: reply after %v", time.Since(t0).Round(time.Millisecond))
	a.request("24", treq{uri: "/24"})
	a.expectOK(t, "24")
}

// Requests received before shutdown are served; the worker unbinds and
// returns.
func TestBindShutdown(t *testing.T) {
	fe := bindEndpoints(t)
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	h := func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			started <- struct{}{}
			<-release
		}
		_, _ = io.WriteString(w, "ok "+r.URL.Path)
	}
	w := startWorker(t, &Worker{FrontEnds: []FrontEnd{fe}, Handler: http.HandlerFunc(h)})
	a := newTestFEConnect(t, fe, "sender-a")
	a.connectSub()
	a.request("1", treq{uri: "/1"})
	a.expectOK(t, "1")
	a.request("2", treq{uri: "/slow"})
	recvWithin(t, started, "the slow handler")
	w.cancel() // Serve starts draining; w.stop below waits for it
	waitUntil(t, "the worker to unbind its request socket", func() bool { return !a.pushHasPeer() })
	close(release)
	eq(t, "in-flight reply", string(a.readReply("2", "GET").body), "ok /slow")
	must(t, w.stop())
}

// A worker that cannot bind fails at once.
func TestBindError(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	defer l.Close()
	fe := bindEndpoints(t)
	fe.Requests = "tcp://" + l.Addr().String()
	w := &Worker{FrontEnds: []FrontEnd{fe}, Handler: pathHandler, Logger: testLogger(t)}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	err = w.Serve(ctx)
	if err == nil || !strings.Contains(err.Error(), "request socket") {
		t.Fatalf("Serve = %v, want an error about the request socket", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Serve waited for its context instead of failing")
	}
	// Bind mode has no control channel.
	fe = bindEndpoints(t)
	fe.Control = "tcp://127.0.0.1:1"
	if err := (&Worker{FrontEnds: []FrontEnd{fe}, Handler: pathHandler}).Serve(ctx); err == nil ||
		!strings.Contains(err.Error(), "no control channel") {
		t.Fatalf("Serve with Bind and Control = %v", err)
	}
}
