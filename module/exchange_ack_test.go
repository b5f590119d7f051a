package caddyzmq

import (
	"sync"
	"testing"
)

// TestExpectAckConcurrent: an exchange is registered, so visible to the
// control goroutine (an ACK for its id), before its request goroutine has
// said it expects an ACK. The two must not race (run with -race), the
// session must be readable by the ACK's side, and an ACK that comes after
// expectAck closes its channel.
func TestExpectAckConcurrent(t *testing.T) {
	for range 50 {
		ex := newExchange(1, 0)
		var wg sync.WaitGroup
		wg.Go(func() { ex.expectAck("sess") })
		wg.Go(func() {
			ex.setWorker("wk-1", nil)
			_ = ex.sessionKey()
		})
		wg.Wait()
		if got := ex.sessionKey(); got != "sess" {
			t.Fatalf("session %q, want sess", got)
		}
	}
	ex := newExchange(2, 0)
	ex.expectAck("")
	ex.setWorker("wk-1", nil)
	select {
	case <-ex.acked:
	default:
		t.Fatal("the ACK did not close the channel expectAck made")
	}
}

// A client that leaves before its request's ACK, and the ACK, may cross:
// whichever comes second learns of the other, so the worker that took the
// request is told (by the ACK's side) or was known (by the client's side).
// Before, an ACK that came after the client's side had looked (and found
// no worker) but before the exchange was unregistered was told nothing,
// and the handler ran on (TestCancelBeforeAck, once in CI).
func TestAbandonBeforeAck(t *testing.T) {
	ex := newExchange(1, 0)
	if w := ex.abandon(); w != "" {
		t.Fatalf("abandon found worker %q before any ACK", w)
	}
	if ex.setWorker("wk-1", nil) != ackAbandoned {
		t.Fatal("an ACK after the client left was not told to disconnect its worker")
	}
	ex = newExchange(2, 0)
	if ex.setWorker("wk-1", nil) != ackTaken {
		t.Fatal("an ACK of a live exchange was told to disconnect")
	}
	if w := ex.abandon(); w != "wk-1" {
		t.Fatalf("abandon after the ACK found %q, want wk-1", w)
	}
	for range 200 { // crossing: exactly one side tells the worker
		ex := newExchange(3, 0)
		var byClient string
		var byAck bool
		var wg sync.WaitGroup
		wg.Go(func() { byClient = ex.abandon() })
		wg.Go(func() { byAck = ex.setWorker("wk-1", nil) == ackAbandoned })
		wg.Wait()
		if (byClient != "") == byAck {
			t.Fatalf("client side found %q, ACK side told to disconnect: %v; want exactly one", byClient, byAck)
		}
	}
}

// The dispatch deadline and a late ACK may cross: the request goroutine
// gives up on the exchange (and sends the request again under a new id)
// exactly when no worker acknowledged it, and an ACK that comes after that
// is refused, so that the worker is told DISCONNECT and never CONFIRM: one
// of the two runs the request, never both.
func TestGiveUpDispatchRefusesLateAck(t *testing.T) {
	ex := newExchange(1, 0)
	if !ex.giveUpDispatch() {
		t.Fatal("an exchange nobody acknowledged was not given up")
	}
	if v := ex.setWorker("wk-1", nil); v != ackRefused {
		t.Fatalf("an ACK after the give-up: verdict %d, want refused", v)
	}
	if w := ex.workerID(); w != "" {
		t.Fatalf("a refused ACK recorded worker %q", w)
	}
	ex = newExchange(2, 0)
	if ex.setWorker("wk-1", nil) != ackTaken || ex.giveUpDispatch() {
		t.Fatal("an acknowledged exchange was given up")
	}
	for range 200 { // crossing: exactly one side wins
		ex := newExchange(3, 0)
		var gaveUp bool
		var verdict ackVerdict
		var wg sync.WaitGroup
		wg.Go(func() { gaveUp = ex.giveUpDispatch() })
		wg.Go(func() { verdict = ex.setWorker("wk-1", nil) })
		wg.Wait()
		if gaveUp == (verdict == ackTaken) {
			t.Fatalf("gave up: %v, ACK verdict %d; want exactly one to win", gaveUp, verdict)
		}
	}
}

// A request that waits for CONFIRM is never confirmed once its client has
// left: neither at its first ACK nor at an ACK its worker sends again
// (which may be because the DISCONNECT was lost).
func TestAbandonedNeverConfirmed(t *testing.T) {
	ex := newExchange(1, 0)
	ex.expectConfirm()
	if v := ex.setWorker("wk-1", nil); v != ackConfirm {
		t.Fatalf("first ACK: verdict %d, want confirm", v)
	}
	if v := ex.setWorker("wk-1", nil); v != ackConfirm {
		t.Fatalf("an ACK sent again: verdict %d, want confirm", v)
	}
	if w := ex.abandon(); w != "wk-1" {
		t.Fatalf("abandon found %q, want wk-1", w)
	}
	if v := ex.setWorker("wk-1", nil); v != ackAbandoned {
		t.Fatalf("an ACK after the client left: verdict %d, want abandoned (DISCONNECT)", v)
	}
	ex = newExchange(2, 0)
	ex.expectConfirm()
	ex.abandon()
	if v := ex.setWorker("wk-1", nil); v != ackAbandoned {
		t.Fatalf("first ACK after the client left: verdict %d, want abandoned", v)
	}
}
