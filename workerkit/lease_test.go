package workerkit

import (
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestPauseHandsRequestsBack: a paused worker starts nothing from that front
// end and hands each request back with NACK; after RESUME it works again.
// A request waiting for a handler slot when PAUSE comes is handed back too.
func TestPauseHandsRequestsBack(t *testing.T) {
	waits := slotWaitHook(t)
	f := newTestFECtl(t)
	g := newGate()
	log, logs := bufferedLogger(t)
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: g, MaxConcurrent: 1, Logger: log})
	id := f.ctlWait("HELLO", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "HELLO") }).id

	// One request holds the only slot; the next waits for it.
	f.request("1", treq{uri: "/block/1", window: testWindow})
	eq(t, "started", recvWithin(t, g.started, "first start"), "/block/1")
	f.ctlWaitAck("1")
	f.request("2", treq{uri: "/two", window: testWindow})
	eq(t, "waiting", recvWithin(t, waits, "request 2 to wait for a slot"), "2")

	f.ctlSend(id, "PAUSE")
	waitUntil(t, "the pause to be logged", func() bool { return strings.Contains(logs.String(), "front end paused us") })
	f.request("3", treq{uri: "/three", window: testWindow})
	nacked := map[string]bool{}
	for !nacked["2"] || !nacked["3"] {
		m := f.ctlWait("NACK", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "NACK ") })
		for _, c := range strings.Fields(m.body)[1:] {
			nacked[c] = true
		}
	}
	g.noneStarted(t)
	noAckFor(t, f, "2", "3")

	f.ctlSend(id, "RESUME")
	close(g.release)
	eq(t, "body 1", string(f.readReply("1", "GET").body), "done /block/1")
	waitUntil(t, "the resume to be logged", func() bool { return strings.Contains(logs.String(), "front end resumed us") })
	f.request("4", treq{uri: "/four", window: testWindow})
	eq(t, "started", recvWithin(t, g.started, "start after resume"), "/four")
	f.ctlWaitAck("4")
	eq(t, "body 4", string(f.readReply("4", "GET").body), "done /four")
}

// TestLeaseLapseCancelsAcknowledged: a worker whose clock jumps past the
// lease (as after a SIGSTOP longer than the front end's liveness bound)
// cancels what it had acknowledged, so that a handler checking its context
// before its side effect does not commit it, and says RESET.
func TestLeaseLapseCancelsAcknowledged(t *testing.T) {
	t.Cleanup(func() { testClockJump.Store(0) })
	f := newTestFECtl(t)
	var errAfter atomic.Value
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-release
		// The side effect's guard, as a careful handler writes it.
		errAfter.Store(r.Context().Err() != nil)
	})
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: h})
	f.ctlWait("HELLO", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "HELLO") })
	f.request("1", treq{window: testWindow})
	recvWithin(t, started, "handler start")
	f.ctlWaitAck("1")

	testClockJump.Add(int64(2 * time.Second))
	close(release) // the handler and the control owner race, as after SIGCONT
	f.ctlWaitBody("RESET")
	waitUntil(t, "the handler to finish", func() bool { return errAfter.Load() != nil })
	if !errAfter.Load().(bool) {
		t.Fatal("the handler's context was still live after the lease lapsed")
	}
}

// TestLateAckNotSent: an ACK that would leave past the request's dispatch
// deadline (plus half the front end's grace) is not sent; the request is
// cancelled instead, since the front end may be re-sending it.
func TestLateAckNotSent(t *testing.T) {
	f := newTestFECtl(t)
	deadline := time.Now().Add(300 * time.Millisecond)
	var delay atomic.Bool
	testHookAckDrain = func(queued func() int) {
		if delay.Load() && queued() > 0 {
			time.Sleep(time.Until(deadline.Add(lateAckGrace + 100*time.Millisecond)))
			delay.Store(false)
		}
	}
	t.Cleanup(func() { testHookAckDrain = nil })
	g := newGate()
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: g})
	f.ctlWait("HELLO", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "HELLO") })

	delay.Store(true)
	f.request("1", treq{uri: "/block/1", window: testWindow, deadline: strconv.FormatInt(deadline.UnixMilli(), 10)})
	eq(t, "started", recvWithin(t, g.started, "start"), "/block/1")
	eq(t, "cancelled", recvWithin(t, g.cancelled, "cancel"), "/block/1")
	f.request("2", treq{uri: "/two", window: testWindow})
	f.ctlWaitAck("2")
	noAckFor(t, f, "1")
}
