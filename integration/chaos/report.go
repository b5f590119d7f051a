package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

type report struct {
	Started time.Time
	Seconds float64
	Command string
	Mode    string
	Machine string
	Commit  string
	Opts    options
	Runs    []*scenarioRun
	Targets []target
}

// target is one of the targets, checked against a run.
type target struct {
	Scenario string `json:"scenario"`
	Name     string `json:"name"`
	Pass     bool   `json:"pass"`
	Got      string `json:"got"`
}

func (r *report) run(key string) *scenarioRun {
	for _, s := range r.Runs {
		if s.sc.key == key && s.an != nil {
			return s
		}
	}
	return nil
}

// evaluate checks the targets of the scenarios that ran.
func (r *report) evaluate() {
	add := func(sc, name string, pass bool, got string, args ...any) {
		r.Targets = append(r.Targets, target{Scenario: sc, Name: name, Pass: pass, Got: fmt.Sprintf(got, args...)})
	}
	if k := r.run("kill"); k != nil {
		g := &k.an.get
		add("kill", "0 failed GETs while a worker is killed every 2 s", g.failures() == 0,
			"%d failed of %d%s", g.failures(), g.Sent, failDetail(g))
	}
	for _, s := range r.Runs {
		if s.an == nil {
			continue
		}
		g, p := &s.an.get, &s.an.post
		add(s.sc.key, "0 requests executed twice", g.ExecTwice+p.ExecTwice == 0,
			"GET %d (%d retried after a lost worker, %d re-sent after the dispatch deadline although started), POST %d (%d re-sent although started)",
			g.ExecTwice, g.ExecTwiceRetried, g.ExecTwiceResent, p.ExecTwice, p.ExecTwiceResent)
	}
	if k := r.run("kill"); k != nil {
		p := &k.an.post
		est := len(k.injections) * k.o.PostConc / k.o.Workers
		add("kill", "POST failures <= POSTs in flight at the killed workers", p.failures() <= p.InflightAtFaulted,
			"%d failed, %d in flight at the %d killed workers (measured: started there, not answered by them; estimate kills x post-conc/workers = %d); %d failures not started at a killed worker",
			p.failures(), p.InflightAtFaulted, len(k.injections), est, p.FailedUnexplained)
	}
	if f := r.run("freeze"); f != nil {
		g, p := &f.an.get, &f.an.post
		sent, failed := g.Sent+p.Sent, g.failures()+p.failures()
		rate := 0.0
		if sent > 0 {
			rate = 100 * float64(failed) / float64(sent)
		}
		qual := ""
		if f.duration < 30*time.Second {
			qual = fmt.Sprintf(" (a %v run; the target is for 30 s)", f.duration)
		}
		add("freeze", "under 1 % failed with a frozen worker", rate < 1,
			"%d of %d = %.2f %%%s", failed, sent, rate, qual)
		add("freeze", "no failures among requests sent after the detection", g.FailedAfterDetect+p.FailedAfterDetect == 0,
			"GET %d, POST %d (detected after %s)", g.FailedAfterDetect, p.FailedAfterDetect, f.an.detectSummary())
	}
}

// Broken: something that is not a measurement went wrong.
func (r *report) Broken() bool {
	for _, s := range r.Runs {
		if len(s.errs) > 0 {
			return true
		}
	}
	return false
}

func failDetail(m *methodStats) string {
	var parts []string
	for _, st := range slices.Sorted(maps.Keys(m.ByStatus)) {
		parts = append(parts, fmt.Sprintf("%d x%d", st, m.ByStatus[st]))
	}
	for _, k := range slices.Sorted(maps.Keys(m.SockByKind)) {
		parts = append(parts, fmt.Sprintf("socket %s x%d", k, m.SockByKind[k]))
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

// cells of one table row.
func row(s *scenarioRun, method string, m *methodStats, first bool) []string {
	name, detect := "", ""
	if first {
		name, detect = s.sc.key, s.an.detectSummary()
	}
	failed := "0"
	if m.Failed > 0 {
		var parts []string
		for _, st := range slices.Sorted(maps.Keys(m.ByStatus)) {
			parts = append(parts, fmt.Sprintf("%d: %d", st, m.ByStatus[st]))
		}
		failed = fmt.Sprintf("%d (%s)", m.Failed, strings.Join(parts, ", "))
	}
	sock := "0"
	if m.SockErr > 0 {
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(m.SockByKind)) {
			parts = append(parts, fmt.Sprintf("%s: %d", k, m.SockByKind[k]))
		}
		sock = fmt.Sprintf("%d (%s)", m.SockErr, strings.Join(parts, ", "))
	}
	twice := fmt.Sprint(m.ExecTwice)
	var why []string
	if m.ExecTwiceRetried > 0 {
		why = append(why, fmt.Sprintf("%d retried", m.ExecTwiceRetried))
	}
	if m.ExecTwiceResent > 0 {
		why = append(why, fmt.Sprintf("%d re-sent", m.ExecTwiceResent))
	}
	if len(why) > 0 {
		twice += " (" + strings.Join(why, ", ") + ")"
	}
	return []string{name, method, fmt.Sprint(m.Sent), fmt.Sprint(m.OK), failed, sock, twice,
		fmtMS(m.P50MS), fmtMS(m.P99MS), detect}
}

var header = []string{"scenario", "req", "sent", "ok", "failed (status)", "socket errors", "executed twice", "p50", "p99", "detect"}

func fmtMS(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%.2f s", v/1000)
	}
	if v >= 100 {
		return fmt.Sprintf("%.0f ms", v)
	}
	return fmt.Sprintf("%.1f ms", v)
}

func (r *report) rows() [][]string {
	var rows [][]string
	for _, s := range r.Runs {
		if s.an == nil {
			rows = append(rows, []string{s.sc.key, "-", "-", "-", "-", "-", "-", "-", "-", "did not run"})
			continue
		}
		rows = append(rows, row(s, "GET", &s.an.get, true), row(s, "POST", &s.an.post, false))
	}
	return rows
}

func (r *report) params() string {
	o := r.Opts
	return fmt.Sprintf("%s mode: %v of load per scenario, %d workers (workerkit, %v of work per request), %d GET + %d POST clients at once, "+
		"Caddy with control channel, reply_timeout %v, dispatch_timeout 1s (default), retries %d, heartbeat %s; client timeout %v. %s%s. Run time %s.",
		r.Mode, o.Duration, o.Workers, o.Work, o.GetConc, o.PostConc, o.ReplyTimeout, o.Retries, o.Heartbeat, o.Timeout,
		r.Machine, commitText(r.Commit), (time.Duration(r.Seconds) * time.Second).String())
}

func commitText(c string) string {
	if c == "" {
		return ""
	}
	return ", commit " + c
}

func detectLegend() []string {
	var out []string
	for _, sc := range scenarios {
		out = append(out, fmt.Sprintf("%s: %s", sc.key, sc.detect))
	}
	return out
}

// text is the report for the terminal.
func (r *report) text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Resilience (%s)\n%s\n\n", r.Command, r.params())
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, cells := range r.rows() {
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	tw.Flush()
	fmt.Fprintf(&b, "\ndetect = median time from the fault to Caddy's log line (max, detected/faults): %s\n", strings.Join(detectLegend(), "; "))
	fmt.Fprintln(&b, "latency over every request (failed ones included); executed twice = ids two workers (or one twice) executed; \"retried\" = Caddy logged a retry of that GET after losing its worker; \"re-sent\" = Caddy re-sent it after its dispatch deadline although the faulted worker had started it.")
	fmt.Fprintln(&b, "\nTargets:")
	for _, t := range r.Targets {
		fmt.Fprintf(&b, "  %-4s  %-8s %s: %s\n", passWord(t.Pass), t.Scenario, t.Name, t.Got)
	}
	fmt.Fprintln(&b, "\nDetails:")
	for _, s := range r.Runs {
		writeDetails(&b, s, "  ")
	}
	return b.String()
}

func passWord(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}

func writeDetails(w io.Writer, s *scenarioRun, ind string) {
	fmt.Fprintf(w, "%s%s (%s; %d faults, %.0f s):\n", ind, s.sc.key, s.sc.title, len(s.injections), s.wall.Seconds())
	for _, e := range s.errs {
		fmt.Fprintf(w, "%s  ERROR: %s\n", ind, e)
	}
	if s.an == nil {
		return
	}
	a := s.an
	fmt.Fprintf(w, "%s  caddy log: worker lost %d (requests failed with them %d), drained and left %d, joined %d, retries after a lost worker %d, dispatch re-sends %d, aborted replies %d, requests failed (Caddy's error log) %s\n",
		ind, a.lost, a.lostFailed, a.drained, a.joined, a.retries, a.resends, a.aborted, statusMap(a.caddyFailed))
	fmt.Fprintf(w, "%s  workers at shutdown: dropped unstarted past their dispatch deadline %d, not acknowledgeable %d, not confirmed %d (killed workers say nothing)\n",
		ind, a.droppedLate, a.droppedUnacked, a.droppedUnconfirmed)
	for _, x := range []struct {
		name string
		m    *methodStats
	}{{"GET", &a.get}, {"POST", &a.post}} {
		m := x.m
		fmt.Fprintf(w, "%s  %s: in flight at faulted workers %d, failed %d of which not started at a faulted worker %d, failed but executed %d, 200 without execution %d, max latency %s\n",
			ind, x.name, m.InflightAtFaulted, m.failures(), m.FailedUnexplained, m.FailedExecuted, m.OKNotExecuted, fmtMS(m.MaxMS))
	}
	if len(a.failTimeline) > 0 {
		var parts []string
		for _, sec := range slices.Sorted(maps.Keys(a.failTimeline)) {
			parts = append(parts, fmt.Sprintf("%+ds: %d", sec, a.failTimeline[sec]))
		}
		fmt.Fprintf(w, "%s  failures by send time since the first fault: %s\n", ind, strings.Join(parts, ", "))
	}
	for _, u := range a.unexplained {
		fmt.Fprintf(w, "%s  failure not explained by the fault (time since the first fault): %s\n", ind, u)
	}
	for _, u := range a.twice {
		fmt.Fprintf(w, "%s  executed twice (time since the first fault): %s\n", ind, u)
	}
	for _, u := range a.afterDetect {
		fmt.Fprintf(w, "%s  failure sent after the detection (time since it): %s\n", ind, u)
	}
	if secs := s.duration.Seconds(); secs > 0 {
		fmt.Fprintf(w, "%s  throughput: %.0f requests/s (GET + POST over the %v of load)\n", ind, float64(a.get.Sent+a.post.Sent)/secs, s.duration)
	}
	if len(s.drains) > 0 {
		slices.Sort(s.drains)
		fmt.Fprintf(w, "%s  SIGTERM to exit: median %s, max %s\n", ind, secs(s.drains[len(s.drains)/2]), secs(s.drains[len(s.drains)-1]))
	}
	for _, n := range s.notes {
		fmt.Fprintf(w, "%s  note: %s\n", ind, n)
	}
}

func statusMap(m map[int]int) string {
	if len(m) == 0 {
		return "0"
	}
	var parts []string
	for _, st := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%d x%d", st, m[st]))
	}
	return strings.Join(parts, ", ")
}

// markdown is the same report for the README.
func (r *report) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "### Resilience\n\n`%s`: %s\n\n", r.Command, r.params())
	fmt.Fprintf(&b, "| %s |\n|%s\n", strings.Join(header, " | "), strings.Repeat("---|", len(header)))
	for _, cells := range r.rows() {
		fmt.Fprintf(&b, "| %s |\n", strings.Join(cells, " | "))
	}
	fmt.Fprintf(&b, "\n*detect*: median time from the fault to Caddy's log line (max, detected/faults). %s. "+
		"Latency over every request, failed ones included. *Executed twice*: ids that workers executed more than once; "+
		"*retried*: Caddy logged a retry of that GET after losing the worker that had started it; "+
		"*re-sent*: Caddy re-sent it after its dispatch deadline although the faulted worker had started it.\n\n", strings.Join(detectLegend(), "; "))
	fmt.Fprintln(&b, "Targets:")
	fmt.Fprintln(&b)
	for _, t := range r.Targets {
		fmt.Fprintf(&b, "- **%s** %s — %s: %s\n", passWord(t.Pass), t.Scenario, t.Name, t.Got)
	}
	fmt.Fprintln(&b, "\n<details><summary>Details</summary>\n\n```")
	for _, s := range r.Runs {
		writeDetails(&b, s, "")
	}
	fmt.Fprintln(&b, "```\n</details>")
	return b.String()
}

// printProgress is the one-line summary after each scenario.
func printProgress(w io.Writer, s *scenarioRun) {
	if s.an == nil {
		fmt.Fprintf(w, "   did not run: %s\n", strings.Join(s.errs, "; "))
		return
	}
	g, p := &s.an.get, &s.an.post
	fmt.Fprintf(w, "   %d faults; GET %d sent, %d failed, %d twice; POST %d sent, %d failed, %d twice; detect %s; %.0f s\n",
		len(s.injections), g.Sent, g.failures(), g.ExecTwice, p.Sent, p.failures(), p.ExecTwice, s.an.detectSummary(), s.wall.Seconds())
	for _, e := range s.errs {
		fmt.Fprintf(w, "   ERROR: %s\n", e)
	}
}

// jsonRun is a run in the JSON file (integration/chaos_test.go reads it).
type jsonRun struct {
	Scenario       string      `json:"scenario"`
	Faults         int         `json:"faults"`
	DetectSeconds  []float64   `json:"detect_seconds"` // -1: not seen
	Get            methodStats `json:"get"`
	Post           methodStats `json:"post"`
	CaddyLost      int         `json:"caddy_worker_lost"`
	CaddyRetries   int         `json:"caddy_retries"`
	CaddyResends   int         `json:"caddy_resends"`
	WorkersDropped int         `json:"workers_dropped_past_deadline"`
	Errors         []string    `json:"errors"`
	Notes          []string    `json:"notes"`
	WallSeconds    float64     `json:"wall_seconds"`
}

func (r *report) writeJSON(path string) error {
	out := struct {
		Started time.Time `json:"started"`
		Seconds float64   `json:"seconds"`
		Command string    `json:"command"`
		Mode    string    `json:"mode"`
		Machine string    `json:"machine"`
		Runs    []jsonRun `json:"runs"`
		Targets []target  `json:"targets"`
		Broken  bool      `json:"broken"`
	}{r.Started, r.Seconds, r.Command, r.Mode, r.Machine, nil, r.Targets, r.Broken()}
	for _, s := range r.Runs {
		j := jsonRun{Scenario: s.sc.key, Faults: len(s.injections), Errors: s.errs, Notes: s.notes, WallSeconds: s.wall.Seconds()}
		if s.an != nil {
			j.Get, j.Post = s.an.get, s.an.post
			j.CaddyLost, j.CaddyRetries, j.CaddyResends, j.WorkersDropped = s.an.lost, s.an.retries, s.an.resends, s.an.droppedLate
			for _, d := range s.an.detect {
				if d < 0 {
					j.DetectSeconds = append(j.DetectSeconds, -1)
				} else {
					j.DetectSeconds = append(j.DetectSeconds, d.Seconds())
				}
			}
		}
		out.Runs = append(out.Runs, j)
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
