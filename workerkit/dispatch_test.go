package workerkit

import (
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
)

// gate is the handler of the dispatch tests: it reports every request that
// starts (its path), and the most handlers it saw running at once; a
// request under /block/ waits until released or cancelled.
type gate struct {
	started    chan string
	cancelled  chan string
	release    chan struct{}
	running    atomic.Int32
	maxRunning atomic.Int32
}

func newGate() *gate {
	return &gate{started: make(chan string, 512), cancelled: make(chan string, 16), release: make(chan struct{})}
}

func (g *gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := g.running.Add(1)
	defer g.running.Add(-1)
	for m := g.maxRunning.Load(); n > m && !g.maxRunning.CompareAndSwap(m, n); m = g.maxRunning.Load() {
	}
	g.started <- r.URL.Path
	if strings.HasPrefix(r.URL.Path, "/block/") {
		select {
		case <-g.release:
		case <-r.Context().Done():
			g.cancelled <- r.URL.Path
			return
		}
	}
	_, _ = io.WriteString(w, "done "+r.URL.Path)
}

// noneStarted fails if a request other than those expected has started.
func (g *gate) noneStarted(t *testing.T) {
	t.Helper()
	select {
	case p := <-g.started:
		t.Fatalf("unexpected request started: %s", p)
	default:
	}
}

// slotWaitHook routes testHookSlotWait to a channel. Set it before the
// worker starts; it is reset after the worker has stopped.
func slotWaitHook(t *testing.T) <-chan string {
	c := make(chan string, 256)
	testHookSlotWait = func(conn string) {
		select {
		case c <- conn:
		default: // never block the worker
		}
	}
	t.Cleanup(func() { testHookSlotWait = nil })
	return c
}

// waitSlotWait waits until request conn waits for a handler slot. Others
// may have waited briefly before (a request that arrives as the previous
// handler returns finds its slot not yet free): they are skipped.
func waitSlotWait(t *testing.T, waits <-chan string, conn string) {
	t.Helper()
	for recvWithin(t, waits, "request "+conn+" to wait for a slot") != conn {
	}
}

// bufferedLogger logs to the test output and to the returned buffer.
func bufferedLogger(t *testing.T) (*slog.Logger, *logBuffer) {
	buf := &logBuffer{}
	return slog.New(slog.NewTextHandler(io.MultiWriter(t.Output(), buf), &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// noAckFor fails if any control message seen so far acknowledged conn.
func noAckFor(t *testing.T, f *testFE, conns ...string) {
	t.Helper()
	for _, m := range f.ctlLog {
		for _, c := range conns {
			if slices.Contains(ackIDs(m), c) {
				t.Errorf("request %s was acknowledged (%q), but must never start", c, m.body)
			}
		}
	}
}

// noReplyFor fails if reply frames for conn were seen (f.next queues frames
// of other connections while it looks for one).
func noReplyFor(t *testing.T, f *testFE, conns ...string) {
	t.Helper()
	for _, c := range conns {
		if q := f.pending[c]; len(q) > 0 {
			t.Errorf("request %s got reply frames %q, but must never start", c, q)
		}
	}
}

const testWindow = "1048576"

// A request the front end addresses to this worker over the control channel
// (REQ, session affinity) is handled as one from the request socket: reply
// on the reply socket, ACK if windowed, disconnect notices.
func TestAddressedRequest(t *testing.T) {
	f := newTestFECtl(t)
	g := newGate()
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: g})
	id := f.ctlWait("HELLO", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "HELLO") }).id
	f.waitWorker()

	// Nonsense is ignored (and logged), not fatal.
	f.ctlSend(id, "REQ ")
	f.ctlSend(id, "REQ not a request frame")

	// Without window: served, never acknowledged.
	f.addressed(id, "1", treq{uri: "/req/1"})
	eq(t, "started", recvWithin(t, g.started, "handler start"), "/req/1")
	r := f.readReply("1", "GET")
	eq(t, "status", r.resp.StatusCode, 200)
	eq(t, "body", string(r.body), "done /req/1")

	// Windowed: ACK, and the reply on the reply socket.
	f.addressed(id, "2", treq{uri: "/req/2", window: testWindow})
	eq(t, "started", recvWithin(t, g.started, "handler start"), "/req/2")
	ack := f.ctlWait("ACK", func(m ctlMsg) bool { return ackIDs(m) != nil })
	eq(t, "first ACK", ack.body, "ACK 2")
	r = f.readReply("2", "GET")
	eq(t, "body", string(r.body), "done /req/2")

	// A Mongrel2 disconnect notice may come the same way.
	f.addressed(id, "3", treq{uri: "/block/3", window: testWindow})
	eq(t, "started", recvWithin(t, g.started, "handler start"), "/block/3")
	f.ctlSend(id, "REQ "+string(mongrel2.AppendDisconnect(nil, f.sender, "3")))
	eq(t, "cancelled", recvWithin(t, g.cancelled, "cancellation"), "/block/3")
}

// An addressed request respects MaxConcurrent: it waits for a slot (it is
// not refused: its session is pinned here), and a DISCONNECT reaches it
// while it waits.
func TestAddressedWaitsForSlot(t *testing.T) {
	waits := slotWaitHook(t)
	f := newTestFECtl(t)
	g := newGate()
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: g, MaxConcurrent: 1})
	id := f.ctlWait("HELLO", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "HELLO") }).id

	f.request("1", treq{uri: "/block/1", window: testWindow}) // pushed; holds the only slot
	eq(t, "started", recvWithin(t, g.started, "handler start"), "/block/1")
	f.ctlWaitAck("1")

	f.addressed(id, "2", treq{uri: "/req/2", window: testWindow})
	waitSlotWait(t, waits, "2")
	g.noneStarted(t)
	f.addressed(id, "3", treq{uri: "/req/3", window: testWindow})
	f.ctlSend(id, "DISCONNECT 3") // its client leaves while it waits
	// The control socket is read in order: once request 1 is cancelled,
	// DISCONNECT 3 has been handled too. That frees the slot.
	f.ctlSend(id, "DISCONNECT 1")
	eq(t, "cancelled", recvWithin(t, g.cancelled, "cancellation of 1"), "/block/1")

	eq(t, "started", recvWithin(t, g.started, "REQ 2 to start"), "/req/2")
	r := f.readReply("2", "GET")
	eq(t, "body", string(r.body), "done /req/2")
	f.ctlWaitAck("2")

	// A later one runs; 3 never did.
	f.addressed(id, "4", treq{uri: "/req/4", window: testWindow})
	eq(t, "started", recvWithin(t, g.started, "REQ 4 to start"), "/req/4")
	f.ctlWaitAck("4")
	r = f.readReply("4", "GET")
	eq(t, "body", string(r.body), "done /req/4")
	noAckFor(t, f, "3")
	noReplyFor(t, f, "3")
	eq(t, "most handlers at once", g.maxRunning.Load(), int32(1))
}

// A worker that starts draining still serves the addressed requests it has
// taken, after its BYE, like those queued in its request socket.
func TestAddressedServedAtShutdown(t *testing.T) {
	waits := slotWaitHook(t)
	f := newTestFECtl(t)
	g := newGate()
	w := startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: g, MaxConcurrent: 1})
	id := f.ctlWait("HELLO", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "HELLO") }).id

	f.request("1", treq{uri: "/block/1", window: testWindow})
	eq(t, "started", recvWithin(t, g.started, "handler start"), "/block/1")
	f.addressed(id, "2", treq{uri: "/req/2", window: testWindow})
	waitSlotWait(t, waits, "2")
	w.cancel()
	f.ctlWaitBody("BYE")
	g.release <- struct{}{}
	eq(t, "body", string(f.readReply("1", "GET").body), "done /block/1")
	eq(t, "started", recvWithin(t, g.started, "REQ 2 to start"), "/req/2")
	eq(t, "body", string(f.readReply("2", "GET").body), "done /req/2")
	must(t, w.stop())
}

// ZMQX_DEADLINE: a request must not start after it. One already past is
// dropped silently (never run, no ACK, no reply); one in the future runs;
// one stuck behind a busy slot until its deadline passes is dropped when
// the slot frees. Through the request socket and through REQ alike.
func TestDispatchDeadline(t *testing.T) {
	waits := slotWaitHook(t)
	f := newTestFECtl(t)
	g := newGate()
	log, logs := bufferedLogger(t)
	w := startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: g, MaxConcurrent: 1, Logger: log})
	id := f.ctlWait("HELLO", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "HELLO") }).id

	type sendFunc func(conn string, q treq)
	paths := []struct {
		name string
		send sendFunc
	}{
		{"pushed", f.request},
		{"addressed", func(conn string, q treq) { f.addressed(id, conn, q) }},
	}
	conn := 100
	next := func() string { conn++; return strconv.Itoa(conn) }
	// marker runs a request after the one under test: requests start in
	// arrival order, one at a time, so once the marker has run, the other
	// would have run (and been acknowledged, and answered) before it.
	marker := func(t *testing.T, send sendFunc) {
		t.Helper()
		c := next()
		send(c, treq{uri: "/marker/" + c, window: testWindow})
		eq(t, "started", recvWithin(t, g.started, "marker start"), "/marker/"+c)
		f.ctlWaitAck(c)
		eq(t, "marker body", string(f.readReply(c, "GET").body), "done /marker/"+c)
	}
	dropped := 0

	for _, p := range paths {
		t.Run(p.name+"/past deadline", func(t *testing.T) {
			c := next()
			p.send(c, treq{uri: "/late/" + c, window: testWindow, deadline: deadlineIn(-time.Second)})
			marker(t, p.send)
			dropped++
			noAckFor(t, f, c)
			noReplyFor(t, f, c)
		})
		t.Run(p.name+"/future deadline", func(t *testing.T) {
			c := next()
			p.send(c, treq{uri: "/ok/" + c, window: testWindow, deadline: deadlineIn(time.Minute)})
			eq(t, "started", recvWithin(t, g.started, "handler start"), "/ok/"+c)
			f.ctlWaitAck(c)
			eq(t, "body", string(f.readReply(c, "GET").body), "done /ok/"+c)
		})
		t.Run(p.name+"/deadline passes while waiting for a slot", func(t *testing.T) {
			busy := next()
			f.request(busy, treq{uri: "/block/" + busy, window: testWindow})
			eq(t, "started", recvWithin(t, g.started, "blocking handler start"), "/block/"+busy)
			f.ctlWaitAck(busy)

			c := next()
			deadline := time.Now().Add(100 * time.Millisecond)
			p.send(c, treq{uri: "/stuck/" + c, window: testWindow, deadline: strconv.FormatInt(deadline.UnixMilli(), 10)})
			waitSlotWait(t, waits, c)
			if time.Now().After(deadline) {
				t.Log("slow machine: the deadline passed before the request was seen waiting")
			}
			// The condition under test is the clock passing the deadline.
			<-time.After(time.Until(deadline) + 2*time.Millisecond)
			g.release <- struct{}{}
			eq(t, "body", string(f.readReply(busy, "GET").body), "done /block/"+busy)
			marker(t, p.send)
			dropped++
			noAckFor(t, f, c)
			noReplyFor(t, f, c)
			if !strings.Contains(logs.String(), `msg="dropping a request past its dispatch deadline" frontend=`+f.fe.String()+" conn="+c) {
				t.Error("the drop was not logged")
			}
		})
	}
	g.noneStarted(t)
	eq(t, "most handlers at once", g.maxRunning.Load(), int32(1))
	must(t, w.stop())
	if want := "past_dispatch_deadline=" + strconv.Itoa(dropped) + " not_acknowledgeable=0"; !strings.Contains(logs.String(), want) {
		t.Errorf("shutdown summary does not say %s", want)
	}
}

// A request with a dispatch deadline is not started unacknowledged: with the
// control channel down the front end will re-send it, so running it could
// run it twice. Without deadline it is served as before, without ACK.
func TestDeadlineNeedsAck(t *testing.T) {
	f := newTestFECtl(t)
	g := newGate()
	log, logs := bufferedLogger(t)
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: g, Logger: log})
	f.ctlWait("HELLO", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "HELLO") })
	// Up (our WELCOME arrived) before it goes down.
	waitUntil(t, "the control connection up", func() bool { return strings.Contains(logs.String(), "control channel connected") })
	f.closeCtl()
	waitUntil(t, "the worker to notice the control channel is down", func() bool {
		return strings.Contains(logs.String(), "control channel disconnected")
	})

	f.request("1", treq{uri: "/deadline/1", window: testWindow, deadline: deadlineIn(time.Minute)})
	f.request("2", treq{uri: "/plain/2", window: testWindow})
	eq(t, "started", recvWithin(t, g.started, "handler start"), "/plain/2")
	eq(t, "body", string(f.readReply("2", "GET").body), "done /plain/2")
	noReplyFor(t, f, "1")
	g.noneStarted(t)
	if !strings.Contains(logs.String(), "cannot be acknowledged") {
		t.Error("the drop was not logged")
	}
}

// ACKs of requests that start together leave as one message, "ACK id id
// ...", at most maxAckIDs ids each; a lone ACK is not held back.
func TestAckCoalescing(t *testing.T) {
	// While hold is set, the control owner waits until that many ACKs are
	// queued before it sends them: deterministic coalescing.
	var hold atomic.Int32
	testHookAckDrain = func(queued func() int) {
		want := int(hold.Load())
		if want == 0 || queued() == 0 {
			return
		}
		deadline := time.Now().Add(waitTimeout)
		for queued() < want && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		hold.Store(0)
	}
	t.Cleanup(func() { testHookAckDrain = nil })
	f := newTestFECtl(t)
	h := func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: http.HandlerFunc(h)})
	f.ctlWait("HELLO", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "HELLO") })

	f.request("1", treq{window: testWindow})
	eq(t, "lone ACK", f.ctlWait("ACK", func(m ctlMsg) bool { return ackIDs(m) != nil }).body, "ACK 1")
	f.readReply("1", "GET")

	const n = maxAckIDs + 2
	hold.Store(n)
	var want []string
	for i := range n {
		c := strconv.Itoa(100 + i)
		want = append(want, c)
		f.request(c, treq{window: testWindow})
	}
	var got []string
	var sizes []int
	for len(got) < n {
		ids := ackIDs(f.ctlWait("ACK", func(m ctlMsg) bool { return ackIDs(m) != nil }))
		got = append(got, ids...)
		sizes = append(sizes, len(ids))
	}
	eq(t, "ids, in the order the requests started", strings.Join(got, " "), strings.Join(want, " "))
	eq(t, "ids per message", fmtInts(sizes), fmtInts([]int{maxAckIDs, 2}))
	for _, c := range want {
		eq(t, "status", f.readReply(c, "GET").resp.StatusCode, 200)
	}
}

func fmtInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}
