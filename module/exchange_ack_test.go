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
