package integration

// A worker's ACKs lost on a control link that died before either end
// noticed (bin/caddy, bin/testworker, real libzmq, a TCP relay the test
// controls on the control hop).

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/zmqbridge/caddy-zmq/internal/cutrelay"
)

// TestLostAckRunsOnce: caddyfiles/chaos.Caddyfile with a short dispatch
// deadline, and one worker whose control connection goes through a relay.
// The relay stalls it: what the worker sends is lost while its connection
// still looks up to it, so the ACKs of the POSTs sent then never reach
// Caddy, which sends each POST again at its deadline (to the same worker:
// the only one), as no reply came either: the handler takes longer than the
// deadline and its grace. Then the relay cuts the connection; the worker dials again.
// Each POST runs exactly once and gets 200: a POST with a deadline starts
// only once Caddy confirms its ACK (ZMQX_CONFIRM), the worker sends the
// unconfirmed ACKs again on its new connection, and Caddy answers those of
// copies it gave up on with DISCONNECT. (Before, the worker started each
// copy at once, and each POST ran twice or more.)
func TestLostAckRunsOnce(t *testing.T) {
	c := startCaddy(t, caddyOpts{Config: "caddyfiles/chaos.Caddyfile", Endpoints: []string{"ZMQ_CONTROL"},
		Env: map[string]string{"DISPATCH_TIMEOUT": "200ms", "REPLY_TIMEOUT": "20s", "ZMQ_LOG_LEVEL": "DEBUG"}})
	relay := cutrelay.Start(t, strings.TrimPrefix(c.Endpoint("ZMQ_CONTROL"), "tcp://"))
	w := startCurveWorker(t, "stalled", c.FrontEnd()+","+relay.Endpoint(), "", "")
	client := c.Client(modeHTTP)
	t.Cleanup(client.CloseIdleConnections)
	waitWorker(t, client, c.HTTPURL("/ready"), "stalled", w, c.proc)
	w.MustWaitFor("control channel connected", startTimeout)

	if n := relay.Stall(); n != 1 {
		t.Fatalf("stalled %d control connections, want the worker's one", n)
	}
	const sends = 6
	tok := newToken("lost-ack")
	type result struct {
		status int
		err    error
	}
	results := make([]result, sends)
	var wg sync.WaitGroup
	done := make(chan struct{})
	for i := range sends {
		wg.Go(func() {
			r, err := do(client, http.MethodPost, c.HTTPURL(fmt.Sprintf("/count/%s-%d?mark=1&sleep=600ms", tok, i)), strings.NewReader("once"), nil)
			results[i].err = err
			if r != nil {
				results[i].status = r.StatusCode
			}
		})
	}
	go func() { wg.Wait(); close(done) }()
	// Every POST reached the worker, and Caddy, having heard no ACK, sent
	// it again: then the ACKs were lost for real.
	resent := "re-sending a request no worker took in time"
	answered := func() error {
		select {
		case <-done:
			return fmt.Errorf("every POST was answered before the cut")
		default:
			return nil
		}
	}
	if err := poll(startTimeout, answered, func() error {
		if n := strings.Count(c.proc.out.String(), resent); n < sends {
			return fmt.Errorf("%d re-sends logged, want %d", n, sends)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	if n := relay.CutWorkerSide(); n != 1 {
		t.Fatalf("cut %d control connections, want 1", n)
	}
	<-done
	out := w.out.String()
	for i, r := range results {
		runs := strings.Count(out, fmt.Sprintf("RAN /count/%s-%d\n", tok, i))
		if r.err != nil || r.status != http.StatusOK || runs != 1 {
			t.Errorf("POST %d: status %d, err %v, ran %d times at the worker; want 200, run once", i, r.status, r.err, runs)
		}
	}
}
