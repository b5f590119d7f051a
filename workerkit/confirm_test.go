package workerkit

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// A request marked ZMQX_CONFIRM starts only once the front end answers its
// ACK with CONFIRM, never when it answers DISCONNECT, and its ACK goes out
// again whenever it may have been lost: unanswered for a heartbeat, or sent
// on a control connection that broke. Each case checks that the request has
// not started by serving an unmarked request after its ACK (requests are
// read in order, and the worker has slots for both).
func TestConfirmedStart(t *testing.T) {
	tests := []struct {
		name string
		// answer plays the front end once the first ACK of conn is seen;
		// it returns whether the request may run.
		answer func(t *testing.T, f *testFE, id, conn string) bool
	}{
		{"CONFIRM: runs", func(t *testing.T, f *testFE, id, conn string) bool {
			f.ctlSend(id, "CONFIRM "+conn)
			return true
		}},
		{"CONFIRM among others: runs", func(t *testing.T, f *testFE, id, conn string) bool {
			f.ctlSend(id, "CONFIRM 99999 "+conn+" 99998")
			return true
		}},
		{"DISCONNECT: never runs", func(t *testing.T, f *testFE, id, conn string) bool {
			f.ctlSend(id, "DISCONNECT "+conn)
			// A CONFIRM after it (nonsense) changes nothing.
			f.ctlSend(id, "CONFIRM "+conn)
			return false
		}},
		{"unanswered: ACK sent again, then CONFIRM", func(t *testing.T, f *testFE, id, conn string) bool {
			n := len(f.ctlLog)
			f.ctlWait("the ACK again", func(m ctlMsg) bool {
				return len(f.ctlLog) > n && strings.HasPrefix(m.body, "ACK") && strings.Contains(m.body+" ", " "+conn+" ")
			})
			f.ctlSend(id, "CONFIRM "+conn)
			return true
		}},
		{"connection broken: ACK sent again on the next, then CONFIRM", func(t *testing.T, f *testFE, id, conn string) bool {
			f.closeCtl()
			f.rebindCtl()
			f.ctlWait("HELLO again", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "HELLO") })
			f.ctlWaitAck(conn)
			f.ctlSend(id, "CONFIRM "+conn)
			return true
		}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newTestFECtl(t)
			g := newGate()
			const maxConc = 4
			w := &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: g, MaxConcurrent: maxConc}
			startWorker(t, w)
			id := f.ctlWait("HELLO", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "HELLO") }).id
			conn := "5" + string(rune('0'+i))
			f.request(conn, treq{method: "POST", uri: "/post/" + conn, body: "once", window: testWindow,
				deadline: deadlineIn(time.Minute), confirm: true})
			f.ctlWaitAck(conn)
			// Not started: an unmarked request after it runs and is
			// answered first.
			f.request("7"+conn, treq{uri: "/other", window: testWindow})
			eq(t, "first started", recvWithin(t, g.started, "the unmarked request"), "/other")
			f.readReply("7"+conn, "GET")
			g.noneStarted(t)

			runs := tt.answer(t, f, id, conn)
			if runs {
				eq(t, "started", recvWithin(t, g.started, "the confirmed request"), "/post/"+conn)
				eq(t, "status", f.readReply(conn, "POST").resp.StatusCode, 200)
			}
			// Whatever it became: a later request runs, and it is the
			// only one to start (the marked one never ran, or ran once).
			f.request("8"+conn, treq{uri: "/last", window: testWindow})
			eq(t, "started last", recvWithin(t, g.started, "the last request"), "/last")
			f.readReply("8"+conn, "GET")
			g.noneStarted(t)
			if !runs {
				noReplyFor(t, f, conn)
			}
			// Every handler slot is free again: as many requests as
			// there are slots all start.
			for j := range maxConc {
				f.request(fmt.Sprintf("9%d%s", j, conn), treq{uri: fmt.Sprintf("/block/%d", j), window: testWindow})
			}
			for range maxConc {
				recvWithin(t, g.started, "a request on a free slot")
			}
			for range maxConc {
				g.release <- struct{}{}
			}
			for j := range maxConc {
				f.readReply(fmt.Sprintf("9%d%s", j, conn), "GET")
			}
			// (Read once every slot was free: the dropped request's handler
			// counted it before giving its slot back.)
			st, err := w.Stats()
			if err != nil {
				t.Fatal(err)
			}
			var want int64 // requests dropped for want of CONFIRM
			if !runs {
				want = 1
			}
			if st.DroppedUnconfirmed != want {
				t.Errorf("Stats().DroppedUnconfirmed = %d, want %d", st.DroppedUnconfirmed, want)
			}
		})
	}
}
