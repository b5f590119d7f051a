package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// methodStats are one method's numbers in one scenario.
type methodStats struct {
	Sent       int            `json:"sent"`
	OK         int            `json:"ok"`
	Failed     int            `json:"failed"` // HTTP answers other than a correct 200
	ByStatus   map[int]int    `json:"failed_by_status,omitempty"`
	SockErr    int            `json:"socket_errors"`
	SockByKind map[string]int `json:"socket_errors_by_kind,omitempty"`
	BadBody    int            `json:"wrong_body"` // a 200 carrying another request's reply
	// ExecTwice: ids that workers executed (EXEC) more than once.
	ExecTwice int `json:"exec_twice"`
	// ExecTwiceRetried: of those, ids Caddy logged "retrying idempotent
	// request after losing its worker" for (the documented price of
	// retries on GET); the others have no explanation.
	ExecTwiceRetried int `json:"exec_twice_retried"`
	// ExecTwiceResent: of the others, ids Caddy re-sent after their
	// dispatch deadline ("re-sending a request no worker took in time")
	// although a worker the fault hit had already started them: the
	// worker's ACK did not reach Caddy in time (the ACK leaves after the
	// handler has started; see the report).
	ExecTwiceResent int `json:"exec_twice_resent"`
	// FailedExecuted: failed at the client (status or socket error), yet
	// executed by a worker.
	FailedExecuted int `json:"failed_but_executed"`
	// OKNotExecuted: a 200 with no EXEC line anywhere (must be 0).
	OKNotExecuted int `json:"ok_not_executed"`
	// InflightAtFaulted: started (START) by a worker the fault hit and not
	// answered by it: the requests that the fault caught in flight.
	InflightAtFaulted int `json:"inflight_at_faulted"`
	// FailedUnexplained: failed although no faulted worker had started it.
	FailedUnexplained int `json:"failed_unexplained"`
	// FailedAfterDetect: failed although sent after Caddy detected the
	// fault (freeze only: one fault, one detection).
	FailedAfterDetect int     `json:"failed_after_detect"`
	P50MS             float64 `json:"p50_ms"`
	P99MS             float64 `json:"p99_ms"`
	MaxMS             float64 `json:"max_ms"`
}

func (m *methodStats) failures() int { return m.Failed + m.SockErr }

func (m *methodStats) unexplainedTwice() int {
	return m.ExecTwice - m.ExecTwiceRetried - m.ExecTwiceResent
}

// analysis is what came out of one scenario's logs and results.
type analysis struct {
	get, post methodStats
	// detect: per injection, the time from the fault to Caddy's log line
	// (-1: not seen).
	detect []time.Duration
	// From Caddy's log.
	lost, lostFailed, retries, resends, joined, drained, aborted int
	caddyFailed                                                  map[int]int
	// From the workers' logs at shutdown (killed workers print nothing).
	droppedLate, droppedUnacked, droppedUnconfirmed int
	// failTimeline: failures by send time, in whole seconds since the
	// first injection.
	failTimeline map[int]int
	// unexplained: a few failures not explained by the fault, with what
	// Caddy logged for them.
	unexplained []string
	// twice: a few requests executed twice.
	twice []string
	// afterDetect: a few failures sent after the fault was detected.
	afterDetect []string
	// undetected: what the detect column says when Caddy has no log line
	// for the fault by design.
	undetected string
}

type idInfo struct {
	exec    uint8
	startBy []int16 // incarnation indexes
}

var uriID = regexp.MustCompile(`[?&]id=(\d+)`)

func analyze(c *cluster, r *scenarioRun) *analysis {
	a := &analysis{caddyFailed: map[int]int{}, failTimeline: map[int]int{}, undetected: r.sc.undetected}
	info := make(map[uint64]*idInfo, len(r.results))
	for i := range r.results {
		info[r.results[i].id] = &idInfo{}
	}
	for k, inc := range c.incs {
		readExecLog(inc.execLog, func(verb string, id uint64) {
			in := info[id]
			if in == nil {
				return // a readiness probe
			}
			switch verb {
			case "START":
				in.startBy = append(in.startBy, int16(k))
			case "EXEC":
				if in.exec < 255 {
					in.exec++
				}
			}
		})
		a.readWorkerLog(strings.TrimSuffix(inc.execLog, ".exec") + ".log")
	}

	evs, _, _ := c.events.snapshot()
	retried := map[uint64]bool{}
	caddyErr := map[uint64]string{} // Caddy's error log line by request id
	resent := map[uint64]bool{}
	for i := range evs {
		e := &evs[i]
		switch {
		case strings.HasPrefix(e.Msg, msgLost):
			a.lost++
			a.lostFailed += e.RequestsFailed
		case e.Msg == msgDrained:
			a.drained++
		case e.Msg == msgJoined:
			a.joined++
		case e.Msg == msgRetry:
			a.retries++
			if m := uriID.FindStringSubmatch(e.URI); m != nil {
				id, _ := strconv.ParseUint(m[1], 10, 64)
				retried[id] = true
			}
		case e.Msg == msgResend:
			a.resends++
			if m := uriID.FindStringSubmatch(e.URI); m != nil {
				id, _ := strconv.ParseUint(m[1], 10, 64)
				resent[id] = true
			}
		case e.Logger == loggerFailed:
			// Only the load's requests (not the readiness probes).
			if m := uriID.FindStringSubmatch(e.Request.URI); m != nil {
				if id, _ := strconv.ParseUint(m[1], 10, 64); info[id] != nil {
					a.caddyFailed[e.Status]++
					caddyErr[id] = fmt.Sprintf("%d %s", e.Status, e.Msg)
				}
			}
		case e.Msg == msgAborting:
			a.aborted++
		}
	}

	// Detection of each injection.
	var detectAt time.Time
	for _, inj := range r.injections {
		d := time.Duration(-1)
		for i := range evs {
			e := &evs[i]
			if e.Worker != inj.victim || !(strings.HasPrefix(e.Msg, msgLost) || strings.HasPrefix(e.Msg, msgHung) || e.Msg == msgDrained) {
				continue
			}
			if t := e.time(); !t.Before(inj.at.Add(-50 * time.Millisecond)) {
				d = t.Sub(inj.at)
				if detectAt.IsZero() {
					detectAt = t
				}
				break
			}
		}
		a.detect = append(a.detect, d)
	}
	if len(r.injections) != 1 || r.sc.key != "freeze" {
		detectAt = time.Time{}
	}
	var first time.Time
	if len(r.injections) > 0 {
		first = r.injections[0].at
	}

	faulted := make([]bool, len(c.incs))
	for k, inc := range c.incs {
		faulted[k] = inc.fault != ""
	}
	var lat [2][]time.Duration
	for i := range r.results {
		res := &r.results[i]
		m, mi := &a.get, 0
		if res.post {
			m, mi = &a.post, 1
		}
		in := info[res.id]
		m.Sent++
		lat[mi] = append(lat[mi], res.dur)
		switch {
		case res.ok():
			m.OK++
		case res.status == 0:
			m.SockErr++
			if m.SockByKind == nil {
				m.SockByKind = map[string]int{}
			}
			m.SockByKind[res.errK]++
		default:
			m.Failed++
			if m.ByStatus == nil {
				m.ByStatus = map[int]int{}
			}
			m.ByStatus[res.status]++
			if res.badBody {
				m.BadBody++
			}
		}
		startedAtFaulted := false
		for _, k := range in.startBy {
			startedAtFaulted = startedAtFaulted || faulted[k]
		}
		if in.exec > 1 {
			m.ExecTwice++
			switch {
			case retried[res.id]:
				m.ExecTwiceRetried++
			case resent[res.id] && startedAtFaulted:
				m.ExecTwiceResent++
			}
			if len(a.twice) < 10 {
				a.twice = append(a.twice, describe(c, res, in, caddyErr[res.id], res.start.Sub(first))+
					fmt.Sprintf(" (retried after a lost worker: %v, re-sent after its dispatch deadline: %v)", retried[res.id], resent[res.id]))
			}
		}
		// In flight at a faulted worker: it started there (START) and was
		// not answered from there, or Caddy failed it because the worker
		// that had taken it (ACK, sent just before the handler starts)
		// went silent.
		atFaulted := strings.Contains(caddyErr[res.id], errWorkerLost)
		for _, k := range in.startBy {
			if faulted[k] && c.incs[k].id != res.worker {
				atFaulted = true
			}
		}
		if atFaulted {
			m.InflightAtFaulted++
		}
		if !res.ok() {
			if in.exec > 0 {
				m.FailedExecuted++
			}
			if !atFaulted {
				m.FailedUnexplained++
				if len(a.unexplained) < 10 {
					a.unexplained = append(a.unexplained, describe(c, res, in, caddyErr[res.id], res.start.Sub(first)))
				}
			}
			if !detectAt.IsZero() && res.start.After(detectAt) {
				m.FailedAfterDetect++
				if len(a.afterDetect) < 10 {
					a.afterDetect = append(a.afterDetect, describe(c, res, in, caddyErr[res.id], res.start.Sub(detectAt)))
				}
			}
			if !first.IsZero() {
				s := res.start.Sub(first)
				sec := int(s / time.Second)
				if s < 0 {
					sec = int((s - time.Second + 1) / time.Second)
				}
				a.failTimeline[sec]++
			}
		} else if in.exec == 0 {
			m.OKNotExecuted++
		}
	}
	for mi, m := range []*methodStats{&a.get, &a.post} {
		l := lat[mi]
		if len(l) == 0 {
			continue
		}
		slices.Sort(l)
		m.P50MS = ms(pct(l, 0.50))
		m.P99MS = ms(pct(l, 0.99))
		m.MaxMS = ms(l[len(l)-1])
	}
	return a
}

func pct(sorted []time.Duration, p float64) time.Duration {
	i := int(float64(len(sorted))*p+0.5) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// readExecLog calls f for every "VERB METHOD ID" line of a worker's log.
func readExecLog(path string, f func(verb string, id uint64)) {
	file, err := os.Open(path)
	if err != nil {
		return // a worker killed before its first request has none
	}
	defer file.Close()
	sc := bufio.NewScanner(file)
	for sc.Scan() {
		fields := bytes.Fields(sc.Bytes())
		if len(fields) != 3 {
			continue
		}
		id, err := strconv.ParseUint(string(fields[2]), 10, 64)
		if err != nil {
			continue
		}
		f(string(fields[0]), id)
	}
}

var (
	reDroppedLate    = regexp.MustCompile(`past_dispatch_deadline=(\d+)`)
	reDroppedUnacked = regexp.MustCompile(`not_acknowledgeable=(\d+)`)
	reDroppedUnconf  = regexp.MustCompile(`not_confirmed=(\d+)`)
)

// readWorkerLog adds up what a worker says at shutdown about requests it
// dropped unstarted.
func (a *analysis) readWorkerLog(path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.Contains(line, "requests dropped unstarted") {
			continue
		}
		if m := reDroppedLate.FindStringSubmatch(line); m != nil {
			n, _ := strconv.Atoi(m[1])
			a.droppedLate += n
		}
		if m := reDroppedUnacked.FindStringSubmatch(line); m != nil {
			n, _ := strconv.Atoi(m[1])
			a.droppedUnacked += n
		}
		if m := reDroppedUnconf.FindStringSubmatch(line); m != nil {
			n, _ := strconv.Atoi(m[1])
			a.droppedUnconfirmed += n
		}
	}
}

// detectSummary: "0.93 s" for one fault, "0.93 s (max 1.08, 7/7)" for
// several: the median, the worst, how many were detected.
func (a *analysis) detectSummary() string {
	var seen []time.Duration
	for _, d := range a.detect {
		if d >= 0 {
			seen = append(seen, d)
		}
	}
	if len(a.detect) == 0 {
		return "-"
	}
	if len(seen) == 0 {
		if a.undetected != "" {
			return a.undetected
		}
		return fmt.Sprintf("not seen (0/%d)", len(a.detect))
	}
	slices.Sort(seen)
	med := seen[len(seen)/2]
	if len(a.detect) == 1 {
		return secs(med)
	}
	return fmt.Sprintf("%s (max %s, %d/%d)", secs(med), secs(seen[len(seen)-1]), len(seen), len(a.detect))
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

// describe is one failed request for the details: when it was sent
// (relative to the fault or its detection), who started it, how often it was
// executed, and what Caddy logged for it.
func describe(c *cluster, res *result, in *idInfo, caddyErr string, since time.Duration) string {
	var by []string
	for _, k := range in.startBy {
		by = append(by, c.incs[k].id)
	}
	method := "GET"
	if res.post {
		method = "POST"
	}
	status := fmt.Sprint(res.status)
	if res.status == 0 {
		status = "socket error " + res.errK
	}
	if caddyErr != "" {
		caddyErr = "; caddy: " + caddyErr
	}
	return fmt.Sprintf("%s id=%d sent at %+.3f s, started by [%s], executed %d times, answered %s after %s%s",
		method, res.id, since.Seconds(), strings.Join(by, " "), in.exec, status, fmtMS(ms(res.dur)), caddyErr)
}
