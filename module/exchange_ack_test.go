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
	if !ex.setWorker("wk-1", nil) {
		t.Fatal("an ACK after the client left was not told to disconnect its worker")
	}
	ex = newExchange(2, 0)
	if ex.setWorker("wk-1", nil) {
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
		wg.Go(func() { byAck = ex.setWorker("wk-1", nil) })
		wg.Wait()
		if (byClient != "") == byAck {
			t.Fatalf("client side found %q, ACK side told to disconnect: %v; want exactly one", byClient, byAck)
		}
	}
}
