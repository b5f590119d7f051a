package main

import (
	"math"
	"testing"
)

func TestCeiling(t *testing.T) {
	respond := &CaseReport{OK: 5, CPUPerReq: 45, WrkPerReq: 25, CPUByProc: map[string]float64{"caddy": 45}}
	zmq := &CaseReport{OK: 5, CPUPerReq: 117, WrkPerReq: 24, CPUByProc: map[string]float64{"caddy": 83, "hello-worker (zmq)": 34}}
	m2 := &CaseReport{OK: 5, CPUPerReq: 80, WrkPerReq: 23, CPUByProc: map[string]float64{"mongrel2": 44, "hello-worker (zmq)": 36}}
	for _, tc := range []struct {
		name       string
		z, d, resp *CaseReport
		want       float64
		ok         bool
	}{
		// 45 µs of Caddy + 34 of worker + 24 of wrk against 45 + 25.
		{"respond", zmq, respond, respond, 70.0 / 103, true},
		{"mongrel2", zmq, m2, respond, 103.0 / 103, true},
		{"no respond case", zmq, m2, nil, 0, false},
		{"respond failed", zmq, m2, &CaseReport{}, 0, false},
		{"no wrk figure", &CaseReport{OK: 5, WrkPerReq: -1, CPUByProc: map[string]float64{"caddy": 83}}, m2, respond, 0, false},
		{"no per-process figures", zmq, &CaseReport{OK: 5, CPUPerReq: 80, WrkPerReq: 23}, respond, 0, false},
	} {
		got, ok := ceiling(tc.z, tc.d, tc.resp)
		if ok != tc.ok || math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("%s: ceiling = %v, %v; want %v, %v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
}
