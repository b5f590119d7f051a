package main

import (
	"math"
	"slices"
	"testing"
)

func TestWSReportFinish(t *testing.T) {
	var cases []Case
	for _, c := range wsCases() {
		if c.Default && (c.WS.Workload == "ws-echo" || c.WS.Workload == "ws-large") && (c.Kind == "zmq" || c.Kind == "reverse_proxy") {
			cases = append(cases, c)
		}
	}
	ok := func(msgs int64, size int, secs float64, caddy, worker float64) WSRun {
		return WSRun{Messages: msgs, Bytes: msgs * int64(size), Seconds: secs, ClientCPU: 5,
			CPUByProcess:      map[string]float64{"caddy": caddy, "worker": worker},
			IOByProcess:       map[string]float64{"caddy": caddy / 2},
			SwitchesByProcess: map[string]float64{"caddy": worker / 10}}
	}
	failed := WSRun{Error: "setup: refused"}
	results := [][]WSRun{
		// ws-echo/zmq: medians 3000 msgs/s, 30 µs of server CPU.
		{ok(2000, 64, 1, 10, 10), ok(3000, 64, 1, 20, 10), ok(8000, 64, 2, 25, 15)},
		// ws-echo/reverse_proxy: one failed run does not count.
		{ok(2000, 64, 1, 15, 5), failed, ok(4000, 64, 1, 15, 5)},
		// ws-large/zmq: 10 MiB in 2 s = 5.24288 MB/s.
		{ok(10, 1<<20, 2, 100, 100)},
		// ws-large/reverse_proxy: every run failed, so no ratio.
		{failed},
	}
	var rep WSReport
	rep.finish(cases, results)
	if !rep.Failed {
		t.Error("failed runs not reported")
	}
	z, rp := rep.find("ws-echo", "zmq"), rep.find("ws-echo", "reverse_proxy")
	if z.OK != 3 || z.Failed != 0 || rp.OK != 2 || rp.Failed != 1 {
		t.Fatalf("run counts zmq %d/%d, reverse_proxy %d/%d", z.OK, z.Failed, rp.OK, rp.Failed)
	}
	for _, c := range []struct {
		name      string
		got, want float64
	}{
		{"zmq msgs/s", z.MsgsPerS, 3000},
		{"zmq over reverse_proxy", z.OverReverseProxy, 1},
		{"zmq MB/s", z.MBPerS, 3000 * 64 / 1e6},
		{"zmq server CPU", z.ServerCPU, 30},
		{"zmq caddy CPU", z.CPUByProcess["caddy"], 20},
		{"zmq caddy io", z.IOByProcess["caddy"], 10},
		{"zmq caddy switches", z.SwitchesByProcess["caddy"], 1},
		{"zmq client CPU", z.ClientCPU, 5},
		{"reverse_proxy msgs/s", rp.MsgsPerS, 3000},
		{"reverse_proxy server CPU", rp.ServerCPU, 20},
		{"ws-large MB/s", rep.find("ws-large", "zmq").MBPerS, 10 * (1 << 20) / 2 / 1e6},
	} {
		if math.Abs(c.got-c.want) > 1e-9 {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if len(rep.Ratios) != 1 {
		t.Fatalf("ratios %+v, want only ws-echo's", rep.Ratios)
	}
	r := rep.Ratios[0]
	if r.Workload != "ws-echo" || r.Ratio != 1 || !r.Pass || r.CPURatio != 1.5 {
		t.Errorf("ratio %+v, want ws-echo 1 (pass), CPU 1.5", r)
	}
	// Below reverse_proxy misses the aim.
	results[1] = []WSRun{ok(6000, 64, 1, 15, 5)}
	rep.finish(cases, results)
	if r := rep.Ratios[0]; r.Ratio != 0.5 || r.Pass {
		t.Errorf("ratio %+v, want 0.5 (miss)", r)
	}
}

func TestWSOnly(t *testing.T) {
	for list, want := range map[string]bool{
		"":                                    false,
		"all":                                 false,
		"ws-echo/zmq":                         true,
		"ws-echo/zmq, ws-large/reverse_proxy": true,
		"ws-echo/zmq,zmq":                     false,
		"wss-echo/zmq,ws-echo-busy/zmq":       true,
	} {
		if got := wsOnly(list); got != want {
			t.Errorf("wsOnly(%q) = %v, want %v", list, got, want)
		}
	}
}

func TestWSURL(t *testing.T) {
	for site, want := range map[string]string{
		"http://127.0.0.1:1234/":  "ws://127.0.0.1:1234/echo",
		"https://localhost:1234/": "wss://localhost:1234/echo",
	} {
		if got := wsURL(site); got != want {
			t.Errorf("wsURL(%q) = %q, want %q", site, got, want)
		}
	}
}

// Each workload of the default set has its two cases, and gets its ratio.
func TestWSWorkloadsPaired(t *testing.T) {
	kinds := map[string][]string{}
	for _, c := range wsCases() {
		if c.Default {
			kinds[c.WS.Workload] = append(kinds[c.WS.Workload], c.Kind)
		}
	}
	for _, w := range []string{"ws-echo", "ws-echo-busy", "wss-echo", "ws-large"} {
		if got := kinds[w]; len(got) < 2 || got[0] != "zmq" || got[1] != "reverse_proxy" {
			t.Errorf("workload %s has cases %v, want zmq and reverse_proxy first", w, got)
		}
	}
	if len(kinds) != 4 {
		t.Errorf("default workloads %v", kinds)
	}
	// The small echo also runs its comparisons: the floor worker behind
	// zmq, Mongrel2 in front of both workers.
	if got, want := kinds["ws-echo"][2:], []string{"zmq+floor", "mongrel2", "mongrel2+floor"}; !slices.Equal(got, want) {
		t.Errorf("ws-echo comparisons %v, want %v", got, want)
	}
}
