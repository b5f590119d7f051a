package caddyzmq

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	dto "github.com/prometheus/client_model/go"
)

// requestsCounted is caddy_zmq_requests_total{pool, outcome} now.
func requestsCounted(t *testing.T, pool, outcome string) float64 {
	t.Helper()
	d := new(dto.Metric)
	if err := zmqMetrics.requests.WithLabelValues(pool, outcome).Write(d); err != nil {
		t.Fatal(err)
	}
	return d.GetCounter().GetValue()
}

// TestBroadcastCounted: a broadcast counts once per worker asked, in its
// pool, by how the request to it ended; one that asks nobody (no live
// worker) counts once, 503.
func TestBroadcastCounted(t *testing.T) {
	ctlEP := "ipc://" + filepath.Join(t.TempDir(), "ctl")
	env := newTestEnv(t, func(h *Handler) {
		h.Pools = []Pool{{Name: "bcast", RequestEndpoint: h.RequestEndpoint, ReplyEndpoint: h.ReplyEndpoint, ControlEndpoint: ctlEP}}
		h.RequestEndpoint, h.ReplyEndpoint = "", ""
		h.Broadcast = &Broadcast{Timeout: caddy.Duration(time.Second)}
	})
	count := func() map[string]float64 {
		m := map[string]float64{}
		for _, o := range outcomeLabels {
			m[o] = requestsCounted(t, "bcast", o)
		}
		return m
	}
	delta := func(before map[string]float64) map[string]float64 {
		d := map[string]float64{}
		for o, v := range count() {
			if v != before[o] {
				d[o] = v - before[o]
			}
		}
		return d
	}

	before := count()
	resp, err := http.Get(env.srv.URL + "/all")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("broadcast without workers: %d, want 503", resp.StatusCode)
	}
	if d := delta(before); len(d) != 1 || d["503"] != 1 {
		t.Fatalf("broadcast without workers counted %v, want one 503", d)
	}

	// Two workers: one answers, one is mute (acknowledges, answers
	// nothing) and times out. A broadcast whose answer was lost (slow
	// joiner, see TestBroadcastAsksEveryWorker) is tried again; each try
	// counts both workers.
	startHBWorker(t, env, ctlEP, "wk-1", false)
	startHBWorker(t, env, ctlEP, "wk-2", true)
	pollUntil(t, "both workers live", func() bool {
		ps := poolViews("bcast")
		return len(ps) == 1 && len(ps[0].Workers) == 2
	})
	for deadline := time.Now().Add(testDeadline); ; {
		before = count()
		lines := getBroadcast(t, env.srv.URL+"/all")
		d := delta(before)
		if d["answered"]+d["504"]+d["502"] != 2 || len(d) > 3 {
			t.Fatalf("one broadcast to two workers counted %v (lines %v)", d, lines)
		}
		if d["answered"] == 1 && d["504"] == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no broadcast answered by wk-1 and timed out on wk-2: %v", lines)
		}
	}
}

// TestBroadcastGatherFailed: a target whose exchange fails reports a
// failed line, counted 503 when its request never reached the worker (it
// could not be routed, or Caddy is stopping) and 502 when the worker took
// it and was lost or found hung.
func TestBroadcastGatherFailed(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want outcome
	}{
		{errAddresseeGone, outcomeNoWorker},
		{errStopped, outcomeNoWorker},
		{errWorkerLost, outcomeBadGateway},
		{errWorkerHung, outcomeBadGateway},
	} {
		t.Run(tc.err.Error(), func(t *testing.T) {
			tr := &transport{pending: map[uint64]*exchange{}}
			p := &poolRuntime{Pool: Pool{Name: "p"}, transport: tr, slots: make(chan struct{}, 1)}
			p.slots <- struct{}{} // the target's in-flight slot
			ex := tr.register(0, true)
			ex.fail(tc.err)
			h := &Handler{Broadcast: &Broadcast{}}
			r := httptest.NewRequest(http.MethodGet, "/all", nil)
			ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
			defer cancel()
			line := h.gather(ctx, r, &bcTarget{pool: p, worker: "wk", ex: ex})
			if line.Type != "failed" || line.outcome != tc.want {
				t.Fatalf("line %q (%s) counted %s, want failed, %s", line.Type, line.Error,
					outcomeLabels[line.outcome], outcomeLabels[tc.want])
			}
			if len(p.slots) != 0 || tr.lookup(ex.id) != nil {
				t.Fatal("the target kept its slot or its exchange")
			}
		})
	}
}
