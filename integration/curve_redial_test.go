package integration

// A CURVE worker whose control connection is cut on its side only redials
// while the old connection lingers at Caddy (bin/caddy, bin/testworker,
// real libzmq, a TCP relay the test controls on the control hop).

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zmqbridge/caddy-zmq/internal/cutrelay"
)

// TestCurveControlRedialRunsOnce: caddyfiles/curve.Caddyfile and one
// allowed worker whose control connection goes through a relay. The relay
// cuts it on the worker's side only; the worker dials again at once while
// the old connection lingers at Caddy, which libzmq then does not read
// (with CURVE a worker id stays with the connection that holds it). POSTs
// sent all through the redial, each held by the handler longer than the
// dispatch deadline and its grace, each run exactly once and get 200: the
// worker takes none while its new connection is unanswered (an ACK sent on
// it would be lost, and Caddy would send the request again), and Caddy
// closes the lingering connection as soon as the worker's key dials again.
func TestCurveControlRedialRunsOnce(t *testing.T) {
	c, serverKey, good := startCurveCaddyAllowing(t, "good")
	relay := cutrelay.Start(t, strings.TrimPrefix(c.Endpoint("ZMQ_CONTROL"), "tcp://"))
	w := startCurveWorker(t, "good", c.FrontEnd()+","+relay.Endpoint(), serverKey, good.secretFile)
	client := c.Client(modeH2)
	t.Cleanup(client.CloseIdleConnections)
	waitWorker(t, client, c.HTTPSURL("/ready"), "good", w, c.proc)
	w.MustWaitFor("control channel connected", startTimeout)

	// Longer than the dispatch deadline (1 s) and its grace (250 ms): a
	// request whose ACK was lost is sent again before it is answered.
	const hold = "1500ms"
	tok := newToken("redial")
	type result struct {
		status int
		err    error
		took   time.Duration
	}
	const sends = 24
	results := make([]result, sends)
	var wg sync.WaitGroup
	if n := relay.CutWorkerSide(); n != 1 {
		t.Fatalf("cut %d control connections, want the worker's one", n)
	}
	cut := time.Now()
	// One POST every 50 ms from the cut on: pacing the load, so that some
	// reach the worker while it is disconnected, some while its new
	// connection is unread, some once it is back.
	tick := time.NewTicker(50 * time.Millisecond)
	for i := range sends {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			url := c.HTTPSURL(fmt.Sprintf("/count/%s-%d?mark=1&sleep=%s", tok, i, hold))
			r, err := do(client, http.MethodPost, url, strings.NewReader("once"), nil)
			results[i] = result{err: err, took: time.Since(start)}
			if r != nil {
				results[i].status = r.StatusCode
			}
		}()
		<-tick.C
	}
	tick.Stop()
	wg.Wait()
	out := w.out.String()
	var slowest time.Duration
	for i, r := range results {
		runs := strings.Count(out, fmt.Sprintf("RAN /count/%s-%d\n", tok, i))
		if r.err != nil || r.status != http.StatusOK || runs != 1 {
			t.Errorf("POST %d (sent %v after the cut): status %d, err %v, ran %d times at the worker; want 200, run once",
				i, time.Duration(i)*50*time.Millisecond, r.status, r.err, runs)
		}
		slowest = max(slowest, r.took)
	}
	// Logged within moments of the redial, long before the last POST's
	// answer.
	caddyLog := c.proc.out.String()
	if !strings.Contains(caddyLog, "closed a worker's control connection that lingers while its key dials again") {
		t.Error("Caddy did not close the lingering connection as a redial")
	}
	if strings.Contains(caddyLog, "closed an authenticated control connection that sent nothing") {
		t.Error("the worker's own redial was counted as an impostor")
	}
	var redials float64
	for s, v := range scrape(t, c) {
		if strings.HasPrefix(s, "caddy_zmq_control_redials_total{") {
			redials += v
		}
	}
	if redials != 1 {
		t.Errorf("caddy_zmq_control_redials_total = %v, want 1", redials)
	}
	t.Logf("%d POSTs over %v from the cut: slowest %v (handler holds each %s); control connection up again %v after the cut",
		sends, time.Since(cut).Round(time.Millisecond), slowest.Round(time.Millisecond), hold, lastLogAt(out, "control channel connected").Sub(cut).Round(time.Millisecond))
}

// lastLogAt is the time of the last slog text line of out whose message is
// msg (zero if none).
func lastLogAt(out, msg string) time.Time {
	var at time.Time
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, `msg="`+msg+`"`) {
			continue
		}
		ts, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
		if t, err := time.Parse(time.RFC3339Nano, ts); err == nil {
			at = t
		}
	}
	return at
}
