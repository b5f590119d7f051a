package workerkit

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestStats: Worker.Stats follows what the worker does: a running handler
// takes a slot, a reply without credit counts one stall, PAUSE shows on its
// front end; DebugHandler serves the same as JSON, and 503 outside Serve.
func TestStats(t *testing.T) {
	f := newTestFECtl(t)
	g := newGate()
	mux := http.NewServeMux()
	mux.Handle("/block/", g)
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(bytes.Repeat([]byte("x"), 3<<20)) // more than the window below
	})
	w := &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: mux, MaxConcurrent: 3}

	if _, err := w.Stats(); err == nil {
		t.Fatal("Stats before Serve: no error")
	}
	rec := httptest.NewRecorder()
	DebugHandler(w).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	eq(t, "debug status before Serve", rec.Code, http.StatusServiceUnavailable)

	startWorker(t, w)
	id := f.ctlWait("HELLO", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "HELLO") }).id

	f.request("1", treq{uri: "/block/1", window: testWindow})
	eq(t, "started", recvWithin(t, g.started, "the blocking request"), "/block/1")
	f.ctlWaitAck("1")
	st := mustStats(t, w)
	eq(t, "id", st.ID, id)
	eq(t, "in flight", st.InFlight, int64(1))
	eq(t, "free slots", st.FreeSlots, 2)
	eq(t, "max", st.MaxConcurrent, 3)
	eq(t, "front ends", len(st.FrontEnds), 1)
	fe := st.FrontEnds[0]
	if !fe.Subscribed || !fe.Control || !fe.ControlConnected || fe.Paused {
		t.Fatalf("front end %+v: want subscribed, control connected, not paused", fe)
	}
	eq(t, "stalls before", st.CreditStalls, int64(0))

	// 3 MiB with a 1 MiB window and no CREDIT: the reply waits.
	f.request("2", treq{uri: "/big", window: testWindow})
	f.ctlWaitAck("2")
	waitUntil(t, "a credit stall", func() bool { return mustStats(t, w).CreditStalls == 1 })
	f.ctlSend(id, "DISCONNECT 2") // ends it
	waitUntil(t, "the stall's time", func() bool { return mustStats(t, w).CreditStallSeconds > 0 })

	f.ctlSend(id, "PAUSE")
	waitUntil(t, "the pause to show", func() bool { return mustStats(t, w).FrontEnds[0].Paused })

	rec = httptest.NewRecorder()
	DebugHandler(w).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	eq(t, "debug status", rec.Code, http.StatusOK)
	var got Stats
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatalf("debug JSON %q: %v", rec.Body, err)
	}
	if got.ID != id || got.InFlight != 1 || !got.FrontEnds[0].Paused || got.CreditStalls != 1 {
		t.Fatalf("debug JSON %s: want id %s, 1 in flight, paused, 1 stall", rec.Body, id)
	}

	f.ctlSend(id, "RESUME")
	close(g.release)
	eq(t, "body 1", string(f.readReply("1", "GET").body), "done /block/1")
	waitUntil(t, "the slot to be free", func() bool { return mustStats(t, w).FreeSlots == 3 })
}

func mustStats(t *testing.T, w *Worker) Stats {
	t.Helper()
	st, err := w.Stats()
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	return st
}
