package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"
)

// Report is everything the bench prints, and what -out writes as JSON.
type Report struct {
	Started         time.Time    `json:"started"`
	DurationSeconds float64      `json:"duration_seconds"`
	Command         string       `json:"command"`
	Machine         Machine      `json:"machine"`
	Params          Params       `json:"params"`
	Cases           []CaseReport `json:"cases"`
	Checks          []Check      `json:"checks"`
	// Goals are the CPU-per-request cost goals (goals.go): Caddy's
	// CPU per zmq request beyond respond's, and workerkit's CPU per request
	// over the floor worker's behind the same front end.
	Goals  []Check `json:"goals,omitempty"`
	Failed bool    `json:"failed"` // a run failed or counted errors
}

type Params struct {
	Rounds    int     `json:"rounds"`
	DurationS float64 `json:"duration_seconds"`
	WarmupS   float64 `json:"warmup_seconds"`
	Threads   int     `json:"wrk_threads"`
	Conns     int     `json:"wrk_connections"`
	Workload  string  `json:"workload"` // "hello world" or "large bodies" (-large)
	WaitQuiet float64 `json:"wait_quiet_seconds"`
	// FrontFloorSpinUS is the busy time added to every frontfloor request
	// (-frontfloor-spin), in µs.
	FrontFloorSpinUS float64 `json:"frontfloor_spin_us,omitempty"`
}

type Machine struct {
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpu_model"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"go_version"`
	Commit    string `json:"commit"`
	Caddy     string `json:"caddy"`
	Mongrel2  string `json:"mongrel2"`
	Wrk       string `json:"wrk"`
	// Binaries are the measured bin/caddy and bin/hello-worker with their
	// modification times: they may be older than Commit.
	Binaries []string `json:"binaries"`
}

// CaseReport sums up the runs of one case. Medians are over successful runs;
// P50/P99 are the medians of the runs' percentiles.
type CaseReport struct {
	Name      string  `json:"name"`
	Group     string  `json:"group"`
	Kind      string  `json:"kind"`
	RPSMedian float64 `json:"rps_median"`
	RPSMin    float64 `json:"rps_min"`
	RPSMax    float64 `json:"rps_max"`
	P50US     float64 `json:"p50_us_median"`
	P99US     float64 `json:"p99_us_median"`
	OK        int     `json:"runs_ok"`
	FailedRun int     `json:"runs_failed"`
	Errors    int64   `json:"wrk_errors"`                    // socket errors + non-2xx/3xx, all runs
	OtherCPU  float64 `json:"other_cpu_percent_max"`         // see Run.CPU
	CPUPerReq float64 `json:"cpu_per_request_us_median"`     // -1: unknown
	WrkPerReq float64 `json:"wrk_cpu_per_request_us_median"` // -1: unknown
	// CPUByProc is the median per process of Run.CPU.ByProcess.
	CPUByProc map[string]float64 `json:"cpu_per_request_us_by_process,omitempty"`
	// SwitchesByProc is the median per process of
	// Run.CPU.SwitchesByProcess.
	SwitchesByProc map[string]float64 `json:"switches_per_request_by_process,omitempty"`
	// ZmqIOByProc is the median per process of Run.CPU.ZmqIOByProcess.
	ZmqIOByProc map[string]float64 `json:"zmq_io_per_request_us_by_process,omitempty"`
	Flagged     bool               `json:"flagged"` // failed runs or errors: do not trust the numbers
	Runs        []Run              `json:"runs"`
}

// Check is one ratio or latency comparison, with its target if it has one.
type Check struct {
	Group  string  `json:"group"`
	Name   string  `json:"name"`
	Value  float64 `json:"value"`
	Shown  string  `json:"shown"`
	Target string  `json:"target,omitempty"`
	Status string  `json:"status,omitempty"` // PASS, MISS, or n/a (a case missing)
	// ByCPU is the same ratio from CPU time per request (the other case's
	// over zmq's): what the ratio would be if CPU were the only limit and
	// both had the machine to themselves. "" when unknown.
	ByCPU string `json:"by_cpu,omitempty"`
	// Ceiling is the most the ratio could be on this machine if the zmq
	// handler cost Caddy no more CPU than respond does: from CPU time per
	// request with wrk's included, since the worker and wrk share the
	// cores with Caddy and the runs are CPU-bound. A target above it
	// cannot be met here by the module's code. "" when unknown.
	Ceiling string `json:"ceiling,omitempty"`
	Note    string `json:"note,omitempty"`
}

// ratioTargets: zmq's median req/s over another case's, per group. A zero
// minimum shows the ratio without a target.
var ratioTargets = []struct {
	group, den string
	min        float64
	num        string // "" is zmq
}{
	// CURVE (docs/security.md): its price, and still ahead of reverse_proxy.
	{group: "HTTP", den: "zmq", min: 0.8, num: "zmq+curve"},
	{group: "HTTP", den: "reverse_proxy", min: 1.0, num: "zmq+curve"},
	{"HTTP", "respond", 0.75, ""},
	{"HTTP", "reverse_proxy", 2.5, ""},
	{"HTTP", "mongrel2", 0.8, ""},
	{"HTTP", "direct", 0, ""},
	{"HTTPS", "respond", 0, ""},
	{"HTTPS", "reverse_proxy", 0, ""},
	{"HTTPS", "mongrel2", 1.0, ""},
}

// medianByProcess is, per process name, the median over the successful
// runs of the figure that of picks; nil if no run has one.
func medianByProcess(runs []Run, of func(cpuShares) map[string]float64) map[string]float64 {
	var maps []map[string]float64
	for _, r := range runs {
		if r.Wrk != nil {
			maps = append(maps, of(r.CPU))
		}
	}
	return medianOfMaps(maps)
}

// medianOfMaps is the median per key over maps (nil if no map has a key).
func medianOfMaps(maps []map[string]float64) map[string]float64 {
	byKey := map[string][]float64{}
	for _, m := range maps {
		for k, v := range m {
			byKey[k] = append(byKey[k], v)
		}
	}
	var m map[string]float64
	for k, v := range byKey {
		if m == nil {
			m = map[string]float64{}
		}
		m[k] = median(v)
	}
	return m
}

// finish computes the per-case summaries and the checks.
func (rep *Report) finish(cases []Case, results [][]Run) {
	rep.DurationSeconds = time.Since(rep.Started).Seconds()
	for i, c := range cases {
		cr := CaseReport{Name: c.Name, Group: c.Group(), Kind: c.Kind, Runs: results[i]}
		var rps, p50, p99, cpu, wrkCPU []float64
		for _, r := range results[i] {
			if r.Wrk == nil {
				cr.FailedRun++
				continue
			}
			cr.OK++
			cr.Errors += r.Wrk.Errors()
			cr.OtherCPU = max(cr.OtherCPU, r.CPU.Other)
			rps = append(rps, r.Wrk.RPS)
			p50 = append(p50, r.Wrk.P50US)
			p99 = append(p99, r.Wrk.P99US)
			if r.CPU.PerRequestUS > 0 {
				cpu = append(cpu, r.CPU.PerRequestUS)
			}
			if r.CPU.WrkPerRequestUS > 0 {
				wrkCPU = append(wrkCPU, r.CPU.WrkPerRequestUS)
			}
		}
		cr.CPUPerReq, cr.WrkPerReq = medianOrUnknown(cpu), medianOrUnknown(wrkCPU)
		cr.CPUByProc = medianByProcess(results[i], func(c cpuShares) map[string]float64 { return c.ByProcess })
		cr.SwitchesByProc = medianByProcess(results[i], func(c cpuShares) map[string]float64 { return c.SwitchesByProcess })
		cr.ZmqIOByProc = medianByProcess(results[i], func(c cpuShares) map[string]float64 { return c.ZmqIOByProcess })
		if len(rps) > 0 {
			cr.RPSMedian, cr.RPSMin, cr.RPSMax = median(rps), slices.Min(rps), slices.Max(rps)
			cr.P50US, cr.P99US = median(p50), median(p99)
		}
		cr.Flagged = cr.FailedRun > 0 || cr.Errors > 0
		rep.Failed = rep.Failed || cr.Flagged
		rep.Cases = append(rep.Cases, cr)
	}
	rep.Checks = rep.checks()
	rep.Goals = rep.goals()
}

// find returns the case of that group and kind, nil if it was not run.
func (rep *Report) find(group, kind string) *CaseReport {
	for i := range rep.Cases {
		if c := &rep.Cases[i]; c.Group == group && c.Kind == kind {
			return c
		}
	}
	return nil
}

func (rep *Report) checks() []Check {
	var out []Check
	note := func(cs ...*CaseReport) string {
		var bad []string
		for _, c := range cs {
			if c.Flagged {
				bad = append(bad, c.Name)
			}
		}
		var notes []string
		if len(bad) > 0 {
			notes = append(notes, "unreliable: errors/failures in "+strings.Join(bad, ", "))
		}
		noisy := 0.0
		for _, c := range cs {
			noisy = max(noisy, c.OtherCPU)
		}
		if noisy > noisyPercent {
			notes = append(notes, fmt.Sprintf("noisy: other processes used up to %.0f%% CPU", noisy))
		}
		return strings.Join(notes, "; ")
	}
	// Checks need both cases selected (-cases); n/a when one has no result.
	for _, t := range ratioTargets {
		num := t.num
		if num == "" {
			num = "zmq"
		}
		z, d := rep.find(t.group, num), rep.find(t.group, t.den)
		if z == nil || d == nil {
			continue
		}
		ck := Check{Group: t.group, Name: num + "/" + t.den}
		if t.min > 0 {
			ck.Target = fmt.Sprintf(">= %.2f", t.min)
		}
		if z.OK == 0 || d.OK == 0 {
			ck.Shown, ck.Status = "-", "n/a"
		} else {
			ck.Value = z.RPSMedian / d.RPSMedian
			ck.Shown = fmt.Sprintf("%.2f", ck.Value)
			if z.CPUPerReq > 0 && d.CPUPerReq > 0 {
				ck.ByCPU = fmt.Sprintf("%.2f", d.CPUPerReq/z.CPUPerReq)
			}
			if t.min > 0 {
				ck.Status = passMiss(ck.Value >= t.min)
			}
			ck.Note = note(z, d)
			if resp := rep.find(t.group, "respond"); resp != nil {
				if c, ok := ceiling(z, d, resp); ok {
					ck.Ceiling = fmt.Sprintf("%.2f", c)
					ck.Note = note(z, d, resp) // the ceiling rests on respond's run too
				}
			}
		}
		out = append(out, ck)
	}
	for _, g := range []string{"HTTP", "HTTPS"} {
		z, rp := rep.find(g, "zmq"), rep.find(g, "reverse_proxy")
		if z == nil || rp == nil {
			continue
		}
		ck := Check{Group: g, Name: fmt.Sprintf("p99 zmq vs reverse_proxy (c=%d)", rep.Params.Conns), Target: "zmq <= reverse_proxy"}
		if z.OK == 0 || rp.OK == 0 {
			ck.Shown, ck.Status = "-", "n/a"
		} else {
			ck.Value = z.P99US / rp.P99US
			ck.Shown = fmt.Sprintf("%s vs %s", fmtMicros(z.P99US), fmtMicros(rp.P99US))
			ck.Status = passMiss(z.P99US <= rp.P99US)
			ck.Note = note(z, rp)
		}
		out = append(out, ck)
	}
	return out
}

// ceiling is the ratio z/d from CPU time per request, wrk's included, with
// z's Caddy costing what respond's Caddy costs: what zmq could reach here if
// the module's own work were free, its worker and wrk being what they are.
// Both sides are sums of per-process medians.
func ceiling(z, d, respond *CaseReport) (float64, bool) {
	if respond == nil || respond.OK == 0 || d.WrkPerReq <= 0 || z.WrkPerReq <= 0 || len(d.CPUByProc) == 0 {
		return 0, false
	}
	caddy, ok := respond.CPUByProc["caddy"]
	if !ok || z.CPUByProc["caddy"] == 0 {
		return 0, false
	}
	floor := caddy + z.WrkPerReq
	for name, us := range z.CPUByProc {
		if name != "caddy" {
			floor += us
		}
	}
	den := d.WrkPerReq
	for _, us := range d.CPUByProc {
		den += us
	}
	return den / floor, true
}

// noisyPercent: a run during which other processes used more of the CPU is
// marked NOISY.
const noisyPercent = 10

func fmtPercent(p float64) string {
	if p < 0 {
		return "?"
	}
	return fmt.Sprintf("%.0f%%", p)
}

func passMiss(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}

// medianOrUnknown is the median of v, -1 (unknown) when v is empty.
func medianOrUnknown(v []float64) float64 {
	if len(v) == 0 {
		return -1
	}
	return median(v)
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// ---------------------------------------------------------------------------
// Output

func printHeader(w io.Writer, rep *Report) {
	m, p := rep.Machine, rep.Params
	fmt.Fprintf(w, "command:  %s\n", rep.Command)
	fmt.Fprintf(w, "machine:  %d CPUs, %s, kernel %s\n", m.CPUs, m.CPUModel, m.Kernel)
	fmt.Fprintf(w, "software: %s; caddy %s; mongrel2 %s; %s\n", m.GoVersion, m.Caddy, m.Mongrel2, m.Wrk)
	fmt.Fprintf(w, "commit:   %s\n", m.Commit)
	fmt.Fprintf(w, "binaries: %s\n", strings.Join(m.Binaries, ", "))
	fmt.Fprintf(w, "load:     wrk -t%d -c%d -d%gs --latency, %gs warm-up, %d interleaved round(s), fresh processes per run\n",
		p.Threads, p.Conns, p.DurationS, p.WarmupS, p.Rounds)
	if p.WaitQuiet > 0 {
		fmt.Fprintf(w, "          waiting up to %gs before each run for a quiet machine\n", p.WaitQuiet)
	}
	if p.FrontFloorSpinUS > 0 {
		fmt.Fprintf(w, "          frontfloor keeps the CPU busy %gµs in every request (-frontfloor-spin)\n", p.FrontFloorSpinUS)
	}
	fmt.Fprintln(w)
}

func printRun(w io.Writer, round, rounds int, c Case, r Run) {
	prefix := fmt.Sprintf("[round %d/%d] %-20s", round, rounds, c.Name)
	if r.Wrk == nil {
		fmt.Fprintf(w, "%s FAILED: %s\n", prefix, r.Error)
		return
	}
	errs := ""
	if s := r.Wrk.ErrorSummary(); s != "" {
		errs = "  ERRORS: " + s
	}
	if r.CPU.Other > noisyPercent {
		errs += fmt.Sprintf("  NOISY: other processes used %.0f%% of the CPU", r.CPU.Other)
	}
	fmt.Fprintf(w, "%s %9.0f req/s  p50 %-8s p99 %-8s cpu: measured %s wrk %s idle %s other %s%s\n", prefix,
		r.Wrk.RPS, fmtMicros(r.Wrk.P50US), fmtMicros(r.Wrk.P99US),
		fmtPercent(r.CPU.Ours), fmtPercent(r.CPU.Wrk), fmtPercent(r.CPU.Idle), fmtPercent(r.CPU.Other), errs)
}

func printReport(w io.Writer, rep *Report) {
	fmt.Fprintf(w, "Medians of %d round(s), wrk -t%d -c%d -d%gs (total run time %s)\n\n",
		rep.Params.Rounds, rep.Params.Threads, rep.Params.Conns, rep.Params.DurationS,
		time.Duration(rep.DurationSeconds*float64(time.Second)).Round(time.Second))
	rows := [][]string{{"group", "case", "req/s", "min..max", "p50", "p99", "cpu/req", "runs", "errors"}}
	for _, c := range rep.Cases {
		name, errs := c.Name, "0"
		if c.Flagged {
			name += " !"
		}
		if c.FailedRun > 0 {
			errs = fmt.Sprintf("%d +%d failed", c.Errors, c.FailedRun)
		} else if c.Errors > 0 {
			errs = fmt.Sprint(c.Errors)
		}
		runs := fmt.Sprintf("%d/%d", c.OK, len(c.Runs))
		if c.OK == 0 {
			rows = append(rows, []string{c.Group, name, "-", "-", "-", "-", "-", runs, errs})
			continue
		}
		rows = append(rows, []string{c.Group, name, fmt.Sprintf("%.0f", c.RPSMedian),
			fmt.Sprintf("%.0f..%.0f", c.RPSMin, c.RPSMax), fmtMicros(c.P50US), fmtMicros(c.P99US),
			fmtMicros(c.CPUPerReq), runs, errs})
	}
	printColumns(w, rows, 2) // group and case left-aligned, numbers right-aligned
	fmt.Fprintln(w)

	worst := -1.0
	for _, c := range rep.Cases {
		worst = max(worst, c.OtherCPU)
	}
	fmt.Fprintln(w, "cpu/req: CPU time of the measured processes (not wrk) per request, median; it depends much less on")
	fmt.Fprintln(w, "other load than req/s does. \"by cpu/req\" below is each ratio computed from it. By process, with")
	fmt.Fprintln(w, "its context switches per request (\"sw\", all its threads): each is a thread hand-off, several µs here;")
	fmt.Fprintln(w, "\"io\" is the part of its CPU spent in libzmq's I/O threads.")
	for _, c := range rep.Cases {
		if len(c.CPUByProc) == 0 {
			continue
		}
		names := slices.Sorted(maps.Keys(c.CPUByProc))
		parts := make([]string, len(names))
		for i, n := range names {
			parts[i] = fmt.Sprintf("%s %s", n, fmtMicros(c.CPUByProc[n]))
			if io, ok := c.ZmqIOByProc[n]; ok {
				parts[i] += fmt.Sprintf(" (io %s)", fmtMicros(io))
			}
			if sw, ok := c.SwitchesByProc[n]; ok {
				parts[i] += fmt.Sprintf(" %.2f sw", sw)
			}
		}
		fmt.Fprintf(w, "  %-20s %s\n", c.Name, strings.Join(parts, ", "))
	}
	fmt.Fprintln(w)
	if worst > noisyPercent {
		fmt.Fprintf(w, "WARNING: other processes used up to %.0f%% of the machine's CPU during measurements;\n"+
			"         the numbers are not comparable with a quiet machine's (see NOISY above).\n\n", worst)
	}

	if len(rep.Checks) > 0 {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "group\tcheck\tvalue\ttarget\tresult\tby cpu/req\tceiling\t")
		for _, ck := range rep.Checks {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", ck.Group, ck.Name, ck.Shown, ck.Target, ck.Status, ck.ByCPU, ck.Ceiling, ck.Note)
		}
		tw.Flush()
		fmt.Fprintln(w, "ceiling: the ratio if zmq's Caddy cost only what respond's does (the module's own work free), from")
		fmt.Fprintln(w, "CPU/request with wrk's included, since worker, wrk and Caddy share the machine's cores.")
	}
	printGoals(w, rep.Goals)
	for _, c := range rep.Cases {
		if c.Flagged {
			fmt.Fprintf(w, "\n! %s:", c.Name)
			for _, r := range c.Runs {
				switch {
				case r.Wrk == nil:
					fmt.Fprintf(w, "\n    round %d failed: %s", r.Round, firstLines(r.Error, 12))
				case r.Wrk.Errors() > 0:
					fmt.Fprintf(w, "\n    round %d: %s", r.Round, r.Wrk.ErrorSummary())
				}
			}
			fmt.Fprintln(w)
		}
	}
}

// printColumns prints rows as a table: the first nLeft columns left-aligned,
// the others right-aligned. (text/tabwriter aligns all columns one way.)
func printColumns(w io.Writer, rows [][]string, nLeft int) {
	width := make([]int, len(rows[0]))
	for _, r := range rows {
		for i, cell := range r {
			width[i] = max(width[i], utf8.RuneCountInString(cell))
		}
	}
	for _, r := range rows {
		var b strings.Builder
		for i, cell := range r {
			pad := strings.Repeat(" ", width[i]-utf8.RuneCountInString(cell))
			if i > 0 {
				b.WriteString("  ")
			}
			if i < nLeft {
				b.WriteString(cell + pad)
			} else {
				b.WriteString(pad + cell)
			}
		}
		fmt.Fprintln(w, b.String())
	}
}

func firstLines(s string, n int) string {
	lines := strings.SplitAfter(s, "\n")
	if len(lines) > n {
		lines = append(lines[:n], "    ...\n")
	}
	return strings.TrimRight(strings.Join(lines, "    "), "\n")
}

func (rep *Report) writeFiles(jsonPath, svgPath string) error {
	if jsonPath != "-" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		if err := writeFile(jsonPath, append(b, '\n')); err != nil {
			return err
		}
		fmt.Printf("\nwrote %s\n", jsonPath)
	}
	if svgPath != "-" {
		if err := writeFile(svgPath, []byte(renderSVG(rep))); err != nil {
			return err
		}
		fmt.Printf("wrote %s\n", svgPath)
	}
	return nil
}

func writeFile(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// ---------------------------------------------------------------------------
// Machine

func machineInfo(root string, env *Env, wrk string) Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), CPUModel: cpuModel()}
	m.Kernel = firstLine(output("uname", "-r"))
	m.Commit = firstLine(output("git", "-C", root, "rev-parse", "--short=12", "HEAD"))
	if m.Commit == "" {
		m.Commit = "unknown"
	} else if strings.TrimSpace(output("git", "-C", root, "status", "--porcelain", "--untracked-files=no")) != "" {
		m.Commit += " (with uncommitted changes)"
	}
	m.Caddy = firstLine(output(env.Caddy, "version"))
	m.Mongrel2 = firstLine(output("dpkg-query", "-W", "-f", "${Version}", "mongrel2-core"))
	m.Wrk = firstLine(output(wrk, "-v")) // exits 1 after printing its version
	if i := strings.Index(m.Wrk, " Copyright"); i > 0 {
		m.Wrk = m.Wrk[:i]
	}
	for _, bin := range []string{env.Caddy, env.Hello} {
		if fi, err := os.Stat(bin); err == nil {
			m.Binaries = append(m.Binaries, fmt.Sprintf("%s (built %s)", bin, fi.ModTime().Format("2006-01-02 15:04:05")))
		}
	}
	for _, p := range []*string{&m.Caddy, &m.Mongrel2, &m.Wrk} {
		if *p == "" {
			*p = "?"
		}
	}
	return m
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}

// output runs a command for information only; errors give what it printed.
func output(name string, args ...string) string {
	b, _ := exec.Command(name, args...).CombinedOutput()
	return string(b)
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(s)
}
