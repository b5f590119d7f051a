package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// WrkParams are the load generator settings shared by every run.
type WrkParams struct {
	Path     string // wrk binary
	Threads  int
	Conns    int
	Duration time.Duration
	// Method, when not empty, is the method of every request (with a
	// one-byte body), set per case (Case.Method); GET otherwise.
	Method string
}

// WrkResult is what one wrk run reported. Latencies are in microseconds
// (wrk prints them with two decimals in its own unit).
type WrkResult struct {
	Requests     int64   `json:"requests"`
	Seconds      float64 `json:"seconds"`
	RPS          float64 `json:"rps"`
	LatencyAvgUS float64 `json:"latency_avg_us"`
	P50US        float64 `json:"p50_us"`
	P75US        float64 `json:"p75_us"`
	P90US        float64 `json:"p90_us"`
	P99US        float64 `json:"p99_us"`
	Connect      int64   `json:"socket_errors_connect"`
	Read         int64   `json:"socket_errors_read"`
	Write        int64   `json:"socket_errors_write"`
	Timeout      int64   `json:"socket_errors_timeout"`
	Non2xx3xx    int64   `json:"non_2xx_3xx"`
	CPUSeconds   float64 `json:"wrk_cpu_seconds"` // wrk's own user+system time (not parsed)
}

// Errors is every failed request or socket error wrk counted.
func (r WrkResult) Errors() int64 {
	return r.Connect + r.Read + r.Write + r.Timeout + r.Non2xx3xx
}

// ErrorSummary is "" without errors, else e.g. "read 3, non-2xx 12".
func (r WrkResult) ErrorSummary() string {
	var parts []string
	for _, e := range []struct {
		name string
		n    int64
	}{{"connect", r.Connect}, {"read", r.Read}, {"write", r.Write}, {"timeout", r.Timeout}, {"non-2xx/3xx", r.Non2xx3xx}} {
		if e.n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", e.name, e.n))
		}
	}
	return strings.Join(parts, ", ")
}

// runWrk runs wrk --latency against url for d and parses its report.
func runWrk(ctx context.Context, p WrkParams, d time.Duration, url string) (WrkResult, string, error) {
	secs := int((d + time.Second - 1) / time.Second) // wrk takes whole seconds
	if secs < 1 {
		secs = 1
	}
	args := []string{"--latency",
		"-t" + strconv.Itoa(p.Threads), "-c" + strconv.Itoa(p.Conns), "-d" + strconv.Itoa(secs) + "s",
		"--timeout", "5s"}
	if p.Method != "" {
		script, err := methodScript(p.Method)
		if err != nil {
			return WrkResult{}, "", err
		}
		defer os.Remove(script)
		args = append(args, "-s", script)
	}
	cmd := exec.CommandContext(ctx, p.Path, append(args, url)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return WrkResult{}, string(out), fmt.Errorf("wrk: %v: %s", err, truncate(string(out), 2000))
	}
	r, err := parseWrk(string(out))
	if ps := cmd.ProcessState; ps != nil {
		r.CPUSeconds = (ps.UserTime() + ps.SystemTime()).Seconds()
	}
	return r, string(out), err
}

// methodScript writes a wrk Lua script that sends every request with
// method and a one-byte body, and returns its path.
func methodScript(method string) (string, error) {
	f, err := os.CreateTemp("", "bench-wrk-*.lua")
	if err != nil {
		return "", err
	}
	_, err = fmt.Fprintf(f, "wrk.method = %q\nwrk.body = \"x\"\nwrk.headers[\"Content-Type\"] = \"text/plain\"\n", method)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

var (
	reSummary  = regexp.MustCompile(`(?m)^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h),`)
	reRPS      = regexp.MustCompile(`(?m)^Requests/sec:\s+([\d.]+)\s*$`)
	reLatAvg   = regexp.MustCompile(`(?m)^\s+Latency\s+([\d.]+)(us|ms|s|m|h)\s`)
	rePct      = regexp.MustCompile(`(?m)^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$`)
	reSockErrs = regexp.MustCompile(`(?m)^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	reNon2xx   = regexp.MustCompile(`(?m)^\s*Non-2xx or 3xx responses: (\d+)`)
)

// parseWrk reads the report of `wrk --latency` (wrk 4.x). Requests/sec, the
// request count and the four percentiles are required; the error lines are
// optional (wrk prints them only when non-zero).
func parseWrk(out string) (WrkResult, error) {
	var r WrkResult
	m := reSummary.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("wrk output: no \"N requests in T\" line:\n%s", out)
	}
	r.Requests, _ = strconv.ParseInt(m[1], 10, 64)
	r.Seconds = toMicros(m[2], m[3]) / 1e6

	m = reRPS.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("wrk output: no Requests/sec line:\n%s", out)
	}
	r.RPS, _ = strconv.ParseFloat(m[1], 64)

	if m = reLatAvg.FindStringSubmatch(out); m != nil {
		r.LatencyAvgUS = toMicros(m[1], m[2])
	}
	pcts := rePct.FindAllStringSubmatch(out, -1)
	seen := map[string]bool{}
	for _, m := range pcts {
		v := toMicros(m[2], m[3])
		switch m[1] {
		case "50":
			r.P50US = v
		case "75":
			r.P75US = v
		case "90":
			r.P90US = v
		case "99":
			r.P99US = v
		}
		seen[m[1]] = true
	}
	if len(seen) != 4 {
		return r, fmt.Errorf("wrk output: no latency distribution (was --latency given?):\n%s", out)
	}

	if m = reSockErrs.FindStringSubmatch(out); m != nil {
		r.Connect, _ = strconv.ParseInt(m[1], 10, 64)
		r.Read, _ = strconv.ParseInt(m[2], 10, 64)
		r.Write, _ = strconv.ParseInt(m[3], 10, 64)
		r.Timeout, _ = strconv.ParseInt(m[4], 10, 64)
	}
	if m = reNon2xx.FindStringSubmatch(out); m != nil {
		r.Non2xx3xx, _ = strconv.ParseInt(m[1], 10, 64)
	}
	return r, nil
}

// toMicros converts a wrk time ("612.00", "us") to microseconds.
func toMicros(num, unit string) float64 {
	v, _ := strconv.ParseFloat(num, 64)
	switch unit {
	case "us":
		return v
	case "ms":
		return v * 1e3
	case "s":
		return v * 1e6
	case "m":
		return v * 60e6
	case "h":
		return v * 3600e6
	}
	return v
}

// fmtMicros prints a latency the way a person reads it.
func fmtMicros(us float64) string {
	switch {
	case us <= 0:
		return "-"
	case us < 1000:
		return fmt.Sprintf("%.0fµs", us)
	case us < 1e6:
		return fmt.Sprintf("%.2fms", us/1e3)
	default:
		return fmt.Sprintf("%.2fs", us/1e6)
	}
}
