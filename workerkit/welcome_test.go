package workerkit

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// unansweredWindow is how long the tests below watch for something that
// must not happen while the front end has not answered HELLO: a bound on
// the observation, not a synchronisation (a slow machine can only make
// the tests miss a defect, never fail a correct worker).
const unansweredWindow = 300 * time.Millisecond

// reconnectUnanswered makes the worker's control connection start again on
// a socket that does not answer HELLO (as a front end that does not read
// the connection), and returns the worker's id from its new HELLO.
func reconnectUnanswered(t *testing.T, f *testFE) string {
	t.Helper()
	f.closeCtl()
	f.noWelcome = true
	f.rebindCtl()
	return f.ctlWait("HELLO on the new connection", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "HELLO") }).id
}

// TestNoWorkBeforeWelcome: on a new control connection the front end has
// not answered, the worker takes no request from the request socket (it
// could not acknowledge it in time); once WELCOME comes, it takes it,
// acknowledges it and serves it.
func TestNoWorkBeforeWelcome(t *testing.T) {
	f := newTestFECtl(t)
	g := newGate()
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: g})
	f.ctlWait("HELLO", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "HELLO") })
	f.request("0", treq{uri: "/warm", window: testWindow, deadline: deadlineIn(time.Minute)})
	eq(t, "started", recvWithin(t, g.started, "handler start"), "/warm")
	f.ctlWaitAck("0")
	eq(t, "body", string(f.readReply("0", "GET").body), "done /warm")

	id := reconnectUnanswered(t, f)
	f.request("1", treq{uri: "/r/1", window: testWindow, deadline: deadlineIn(time.Minute)})
	select {
	case p := <-g.started:
		t.Fatalf("%s started before the front end answered HELLO", p)
	case <-time.After(unansweredWindow):
	}
	f.ctlSend(id, "WELCOME")
	eq(t, "started", recvWithin(t, g.started, "handler start after WELCOME"), "/r/1")
	f.ctlWaitAck("1")
	eq(t, "body", string(f.readReply("1", "GET").body), "done /r/1")
}

// TestAckHeldUntilWelcome: a request that starts while the new control
// connection is not answered (it waited for a handler slot) has its ACK
// held, not dropped: it goes out once WELCOME comes.
func TestAckHeldUntilWelcome(t *testing.T) {
	waits := slotWaitHook(t)
	f := newTestFECtl(t)
	g := newGate()
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: g, MaxConcurrent: 1})
	f.ctlWait("HELLO", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "HELLO") })
	f.request("1", treq{uri: "/block/1", window: testWindow})
	eq(t, "started", recvWithin(t, g.started, "first start"), "/block/1")
	f.ctlWaitAck("1")
	f.request("2", treq{uri: "/two", window: testWindow, deadline: deadlineIn(time.Minute)})
	eq(t, "waiting", recvWithin(t, waits, "request 2 to wait for a slot"), "2")

	id := reconnectUnanswered(t, f)
	g.release <- struct{}{}
	eq(t, "started", recvWithin(t, g.started, "request 2 to start"), "/two")
	eq(t, "body", string(f.readReply("2", "GET").body), "done /two")
	f.pumpCtl()
	if i := slices.IndexFunc(f.ctlLog, func(m ctlMsg) bool { return slices.Contains(ackIDs(m), "2") }); i >= 0 {
		t.Fatalf("ACK 2 sent before the front end answered HELLO: %v", f.ctlLog)
	}
	f.ctlSend(id, "WELCOME")
	f.ctlWaitAck("2")
}

// TestFrontEndWithoutWelcome: a front end that predates WELCOME never
// answers HELLO. The worker waits welcomeWait, says so once, and works as
// before: its requests are acknowledged, and later connections count as up
// at HELLO.
func TestFrontEndWithoutWelcome(t *testing.T) {
	f := newTestFECtl(t)
	f.noWelcome = true
	g := newGate()
	log, logs := bufferedLogger(t)
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: g, Logger: log})
	f.ctlWait("HELLO", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "HELLO") })
	f.request("1", treq{uri: "/r/1", window: testWindow, deadline: deadlineIn(time.Minute)})
	eq(t, "started", recvWithin(t, g.started, "handler start"), "/r/1")
	f.ctlWaitAck("1")
	eq(t, "body", string(f.readReply("1", "GET").body), "done /r/1")

	f.closeCtl()
	f.rebindCtl()
	f.ctlWait("HELLO on the new connection", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "HELLO") })
	f.request("2", treq{uri: "/r/2", window: testWindow, deadline: deadlineIn(time.Minute)})
	eq(t, "started", recvWithin(t, g.started, "handler start"), "/r/2")
	f.ctlWaitAck("2")
	if n := strings.Count(logs.String(), "did not answer HELLO"); n != 1 {
		t.Fatalf("the missing WELCOME logged %d times, want once:\n%s", n, logs.String())
	}
}

// TestLapseWhileUnansweredSaysReset: the lease lapses while the new control
// connection is unanswered (the front end may take us for lost): the
// requests acknowledged before are cancelled, and RESET goes out first
// thing once the connection is up.
func TestLapseWhileUnansweredSaysReset(t *testing.T) {
	t.Cleanup(func() { testClockJump.Store(0) })
	f := newTestFECtl(t)
	g := newGate()
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: g})
	f.ctlWait("HELLO", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "HELLO") })
	f.request("1", treq{uri: "/block/1", window: testWindow})
	eq(t, "started", recvWithin(t, g.started, "handler start"), "/block/1")
	f.ctlWaitAck("1")

	id := reconnectUnanswered(t, f)
	testClockJump.Add(int64(2 * leaseLapse))
	eq(t, "cancelled", recvWithin(t, g.cancelled, "the acknowledged request cancelled"), "/block/1")
	f.pumpCtl()
	if slices.ContainsFunc(f.ctlLog, func(m ctlMsg) bool { return m.body == "RESET" }) {
		t.Fatalf("RESET sent on a connection the front end has not answered: %v", f.ctlLog)
	}
	f.ctlSend(id, "WELCOME")
	f.ctlWaitBody("RESET")
}
