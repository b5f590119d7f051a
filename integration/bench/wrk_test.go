package main

import (
	"math"
	"os"
	"strings"
	"testing"
)

// Real wrk 4.1.0 reports (the second one with errors, the third in seconds
// and with thousands of requests per second).
const wrkOK = `Running 5s test @ http://127.0.0.1:41235/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   652.23us  200.11us   5.43ms   80.12%
    Req/Sec    48.12k     2.11k   52.00k    70.00%
  Latency Distribution
     50%  612.00us
     75%  700.50us
     90%  800.00us
     99%    1.50ms
  240123 requests in 5.00s, 30.00MB read
Requests/sec:  48012.34
Transfer/sec:      6.00MB
`

const wrkErrors = `Running 1s test @ http://127.0.0.1:18123/nonexistent
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.66ms    3.14ms  33.05ms   91.08%
    Req/Sec     1.23k   348.41     1.62k    80.00%
  Latency Distribution
     50%    2.78ms
     75%    3.71ms
     90%    5.93ms
     99%   19.90ms
  1221 requests in 1.00s, 620.22KB read
  Socket errors: connect 0, read 7, write 2, timeout 31
  Non-2xx or 3xx responses: 1221
Requests/sec:   1218.18
Transfer/sec:    618.79KB
`

const wrkSlow = `Running 10s test @ https://localhost:8443/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20s   300.00ms   2.00s    70.00%
    Req/Sec    10.00     3.00    20.00     60.00%
  Latency Distribution
     50%    1.10s 
     75%    1.40s 
     90%    1.80s 
     99%    1.00m 
  530 requests in 10.01s, 60.00KB read
Requests/sec:     52.95
Transfer/sec:      6.00KB
`

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-6*math.Max(1, math.Abs(b)) }

func TestParseWrk(t *testing.T) {
	tests := []struct {
		name string
		out  string
		want WrkResult
	}{
		{"ok", wrkOK, WrkResult{Requests: 240123, Seconds: 5, RPS: 48012.34, LatencyAvgUS: 652.23,
			P50US: 612, P75US: 700.5, P90US: 800, P99US: 1500}},
		{"errors", wrkErrors, WrkResult{Requests: 1221, Seconds: 1, RPS: 1218.18, LatencyAvgUS: 3660,
			P50US: 2780, P75US: 3710, P90US: 5930, P99US: 19900,
			Read: 7, Write: 2, Timeout: 31, Non2xx3xx: 1221}},
		{"seconds", wrkSlow, WrkResult{Requests: 530, Seconds: 10.01, RPS: 52.95, LatencyAvgUS: 1.2e6,
			P50US: 1.1e6, P75US: 1.4e6, P90US: 1.8e6, P99US: 60e6}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseWrk(tt.out)
			if err != nil {
				t.Fatal(err)
			}
			g, w := got, tt.want
			floats := []struct {
				name      string
				got, want float64
			}{
				{"Seconds", g.Seconds, w.Seconds}, {"RPS", g.RPS, w.RPS}, {"LatencyAvgUS", g.LatencyAvgUS, w.LatencyAvgUS},
				{"P50US", g.P50US, w.P50US}, {"P75US", g.P75US, w.P75US}, {"P90US", g.P90US, w.P90US}, {"P99US", g.P99US, w.P99US},
			}
			for _, f := range floats {
				if !near(f.got, f.want) {
					t.Errorf("%s = %v, want %v", f.name, f.got, f.want)
				}
			}
			g.Seconds, g.RPS, g.LatencyAvgUS, g.P50US, g.P75US, g.P90US, g.P99US = 0, 0, 0, 0, 0, 0, 0
			w.Seconds, w.RPS, w.LatencyAvgUS, w.P50US, w.P75US, w.P90US, w.P99US = 0, 0, 0, 0, 0, 0, 0
			if g != w {
				t.Errorf("counts: got %+v, want %+v", g, w)
			}
		})
	}
}

func TestParseWrkErrorsSummary(t *testing.T) {
	r, err := parseWrk(wrkErrors)
	if err != nil {
		t.Fatal(err)
	}
	if r.Errors() != 7+2+31+1221 {
		t.Errorf("Errors() = %d", r.Errors())
	}
	if got, want := r.ErrorSummary(), "read 7, write 2, timeout 31, non-2xx/3xx 1221"; got != want {
		t.Errorf("ErrorSummary() = %q, want %q", got, want)
	}
	ok, _ := parseWrk(wrkOK)
	if ok.Errors() != 0 || ok.ErrorSummary() != "" {
		t.Errorf("clean run reports errors: %+v", ok)
	}
}

func TestParseWrkRejects(t *testing.T) {
	for name, out := range map[string]string{
		"empty":            "",
		"connection error": "unable to connect to 127.0.0.1:18124 Connection refused\n",
		"no --latency":     strings.Replace(wrkOK, "  Latency Distribution\n     50%  612.00us\n     75%  700.50us\n     90%  800.00us\n     99%    1.50ms\n", "", 1),
		"no requests/sec":  strings.Replace(wrkOK, "Requests/sec:  48012.34\n", "", 1),
	} {
		if _, err := parseWrk(out); err == nil {
			t.Errorf("%s: parsed without error", name)
		}
	}
}

func TestFmtMicros(t *testing.T) {
	for us, want := range map[float64]string{0: "-", 612: "612µs", 1500: "1.50ms", 2.5e6: "2.50s"} {
		if got := fmtMicros(us); got != want {
			t.Errorf("fmtMicros(%v) = %q, want %q", us, got, want)
		}
	}
}

// TestMethodScript: the script wrk runs for a case with a method sets the
// method and a one-byte body (make bench runs it: zmq+control/post).
func TestMethodScript(t *testing.T) {
	path, err := methodScript("POST")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(path)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := "wrk.method = \"POST\"\nwrk.body = \"x\"\nwrk.headers[\"Content-Type\"] = \"text/plain\"\n"
	if string(b) != want {
		t.Fatalf("script %q, want %q", b, want)
	}
}
