package main

import (
	"math"
	"strings"
	"testing"
)

func TestGoals(t *testing.T) {
	kase := func(name, kind string, byProc map[string]float64) CaseReport {
		return CaseReport{Name: name, Group: "HTTP", Kind: kind, OK: 3, CPUByProc: byProc}
	}
	zmq := kase("zmq", "zmq", map[string]float64{"caddy": 90, "hello-worker (zmq)": 46})
	respond := kase("respond", "respond", map[string]float64{"caddy": 40})
	zmqFloor := kase("zmq/floor", "zmq+floor", map[string]float64{"caddy": 85, floorProcess: 40})
	m2 := kase("mongrel2", "mongrel2", map[string]float64{"mongrel2": 50, "hello-worker (zmq)": 25})
	m2Floor := kase("mongrel2/floor", "mongrel2+floor", map[string]float64{"mongrel2": 40, floorProcess: 22})
	floorHandler := kase("zmq/floor-handler", "zmq+floor-handler", map[string]float64{"caddy": 85, floorHandlerProcess: 48})
	m2FloorHandler := kase("mongrel2/floor-handler", "mongrel2+floor-handler", map[string]float64{"mongrel2": 40, floorHandlerProcess: 33})
	frontFloor := kase("frontfloor", "frontfloor", map[string]float64{frontFloorProcess: 52, floorProcess: 20})
	frontFloorRespond := kase("frontfloor/respond", "frontfloor-respond", map[string]float64{frontFloorProcess: 20})
	frontFloorFailed := kase("frontfloor/respond", "frontfloor-respond", nil)
	frontFloorFailed.OK = 0
	failed := kase("respond", "respond", nil)
	failed.OK, failed.Flagged = 0, true
	noisy := zmq
	noisy.OtherCPU = 35
	lessNoisy := respond
	lessNoisy.OtherCPU = 20
	flaggedZmq := zmq
	flaggedZmq.Flagged = true
	// An HTTPS zmq case must not be taken for the HTTP one.
	httpsZmq := kase("https/zmq", "zmq", map[string]float64{"caddy": 10, "hello-worker (zmq)": 1})
	httpsZmq.Group = "HTTPS"

	const (
		module      = "caddy cpu/req: zmq - respond"
		behindCaddy = "worker cpu/req: workerkit / floor, behind caddy zmq"
		behindM2    = "worker cpu/req: workerkit / floor, behind mongrel2"
		refFront    = "reference: frontfloor cpu/req: bridge - respond"
		refHandler  = "reference: floor with a Handler / floor, behind caddy zmq"
		refHandlerM = "reference: floor with a Handler / floor, behind mongrel2"
	)
	type want struct {
		value  float64
		status string
	}
	for _, tc := range []struct {
		name  string
		cases []CaseReport
		want  map[string]want
		note  string // expected on every computed goal
	}{
		{"all cases", []CaseReport{httpsZmq, zmq, respond, zmqFloor, m2, m2Floor}, map[string]want{
			module:      {50, "MISS"},   // 90 - 40
			behindCaddy: {1.15, "PASS"}, // 46 / 40, on the target: pass
			behindM2:    {25.0 / 22, "PASS"},
		}, ""},
		{"module goal met", []CaseReport{kase("zmq", "zmq", map[string]float64{"caddy": 60}), respond}, map[string]want{
			module: {20, "PASS"},
		}, ""},
		{"worker ratio missed", []CaseReport{kase("zmq", "zmq", map[string]float64{"caddy": 90, "hello-worker (zmq)": 60}), zmqFloor}, map[string]want{
			behindCaddy: {1.5, "MISS"},
		}, ""},
		{"respond failed", []CaseReport{zmq, failed}, map[string]want{module: {0, "n/a"}}, ""},
		{"noisy", []CaseReport{lessNoisy, noisy}, map[string]want{module: {50, "MISS"}}, "noisy: other processes used up to 35% CPU"},
		{"errors in a run", []CaseReport{flaggedZmq, lessNoisy}, map[string]want{module: {50, "MISS"}}, "unreliable: errors/failures in zmq"},
		{"floor not run", []CaseReport{zmq, m2}, map[string]want{}, ""},
		{"references", []CaseReport{zmq, respond, zmqFloor, floorHandler, frontFloor, frontFloorRespond, m2Floor, m2FloorHandler}, map[string]want{
			module:      {50, "MISS"},
			behindCaddy: {1.15, "PASS"},
			refFront:    {32, "ref"}, // the bridge's front end only: 52 - 20
			refHandler:  {48.0 / 40, "ref"},
			refHandlerM: {33.0 / 22, "ref"},
		}, ""},
		{"reference without its floor", []CaseReport{floorHandler, frontFloor}, map[string]want{}, ""},
		{"reference whose case failed", []CaseReport{frontFloor, frontFloorFailed}, map[string]want{refFront: {0, "ref"}}, ""},
		{"only HTTPS", []CaseReport{httpsZmq, respond}, map[string]want{}, ""},
	} {
		rep := &Report{Cases: tc.cases}
		got := rep.goals()
		for _, g := range got {
			if g.Name == refFront && strings.Contains(g.Shown, "spinning") {
				t.Errorf("%s: %s shown %q without -frontfloor-spin", tc.name, g.Name, g.Shown)
			}
		}
		if len(got) != len(tc.want) {
			t.Errorf("%s: %d goals %+v; want %d", tc.name, len(got), got, len(tc.want))
			continue
		}
		for _, g := range got {
			w, ok := tc.want[g.Name]
			if !ok {
				t.Errorf("%s: unexpected goal %q", tc.name, g.Name)
				continue
			}
			if math.Abs(g.Value-w.value) > 1e-9 || g.Status != w.status {
				t.Errorf("%s: %s = %v %s; want %v %s", tc.name, g.Name, g.Value, g.Status, w.value, w.status)
			}
			if w.status != "n/a" && g.Note != tc.note {
				t.Errorf("%s: %s note %q; want %q", tc.name, g.Name, g.Note, tc.note)
			}
		}
	}
}

// With -frontfloor-spin the front-end reference says that both frontfloor
// cases were weighed down.
func TestGoalsFrontFloorSpin(t *testing.T) {
	kase := func(name, kind string, byProc map[string]float64) CaseReport {
		return CaseReport{Name: name, Group: "HTTP", Kind: kind, OK: 3, CPUByProc: byProc}
	}
	rep := &Report{Params: Params{FrontFloorSpinUS: 16}, Cases: []CaseReport{
		kase("frontfloor", "frontfloor", map[string]float64{frontFloorProcess: 75, floorProcess: 20}),
		kase("frontfloor/respond", "frontfloor-respond", map[string]float64{frontFloorProcess: 41}),
	}}
	got := rep.goals()
	if len(got) != 1 || got[0].Value != 34 || got[0].Shown != "34.0 µs (75.0 - 41.0), spinning 16µs" {
		t.Fatalf("goals %+v", got)
	}
}
