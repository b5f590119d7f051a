package caddyzmq

import (
	"errors"
	"testing"
	"time"
)

// TestUndeliveredAttemptEnd: an attempt whose REQ could not be routed to
// its session's worker (errAddresseeGone) forgets the pin and ends without
// settling it: no ACK can come, so none is waited for, nor left awaited
// for its exchange (pinTable.awaitAck).
func TestUndeliveredAttemptEnd(t *testing.T) {
	tr := &transport{pending: map[uint64]*exchange{}, pins: newPinTable(time.Hour)}
	p := &poolRuntime{transport: tr, slots: make(chan struct{}, 1)}
	p.slots <- struct{}{} // the attempt's in-flight slot
	ex := tr.register(0, false)
	ex.expectAck("sess")
	tr.pins.set("sess", "wk-gone")
	a := &attempt{call: &call{st: &requestState{}}, p: p, t: tr, ex: ex, session: "sess"}

	if err := a.ended(errAddresseeGone); !errors.Is(err, errAddresseeGone) {
		t.Fatalf("ended: %v, want errAddresseeGone (serve balances it again)", err)
	}
	a.end()
	if wk := tr.pins.get("sess"); wk != "" {
		t.Fatalf("session still pinned to %q", wk)
	}
	tr.pins.mu.Lock()
	_, awaited := tr.pins.awaiting[ex.id]
	tr.pins.mu.Unlock()
	if awaited {
		t.Fatal("an ACK is awaited for a request no worker received")
	}
	if len(p.slots) != 0 || tr.lookup(ex.id) != nil {
		t.Fatal("the attempt kept its slot or its exchange")
	}
}

// TestNotQueuedAttemptKeepsPin: an attempt whose REQ found the control
// queues to its (live) session worker full (errReqNotQueued) keeps the
// pin, waits for no ACK, and is answered as by a full pool (errQueueFull:
// serve tries another pool or answers 503).
func TestNotQueuedAttemptKeepsPin(t *testing.T) {
	tr := &transport{pending: map[uint64]*exchange{}, pins: newPinTable(time.Hour)}
	p := &poolRuntime{transport: tr, slots: make(chan struct{}, 1)}
	p.slots <- struct{}{}
	ex := tr.register(0, false)
	ex.expectAck("sess")
	tr.pins.set("sess", "wk-busy")
	a := &attempt{call: &call{st: &requestState{}}, p: p, t: tr, ex: ex, session: "sess"}

	if err := a.ended(errReqNotQueued); !errors.Is(err, errQueueFull) {
		t.Fatalf("ended: %v, want an errQueueFull", err)
	}
	a.end()
	if wk := tr.pins.get("sess"); wk != "wk-busy" {
		t.Fatalf("session pinned to %q, want wk-busy still", wk)
	}
	tr.pins.mu.Lock()
	_, awaited := tr.pins.awaiting[ex.id]
	tr.pins.mu.Unlock()
	if awaited {
		t.Fatal("an ACK is awaited for a request no worker received")
	}
}
