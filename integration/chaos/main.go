// Command chaos is the fault-injection suite: it runs bin/caddy
// (caddyfiles/chaos.Caddyfile: control channel on, retries 1) in front of
// four bin/chaosworker workers, loads it with GET and POST requests that
// each carry a unique id, injects one fault per scenario, and reports per
// scenario and method: requests sent, succeeded, failed by status, socket
// errors, requests executed more than once (the workers log every executed
// id), p50/p99 latency, and the time Caddy took to notice the fault.
//
//	go run ./integration/chaos [-short] [-duration 30s] [-scenarios kill,freeze,restart,hung] [-md bin/chaos.md]
//
// Scenarios (each on fresh processes and ports):
//
//	kill     SIGKILL one worker every 2 s (in turn), restarting it at once
//	freeze   SIGSTOP one worker for 10 s, then SIGCONT
//	restart  rolling restart: SIGTERM (drain), start again, next worker
//	hung     one worker keeps taking requests and answers none
//
// Needs `make build` and bin/chaosworker (go build -o bin/chaosworker
// ./integration/chaosworker). Writes the table to stdout, as markdown to -md,
// the numbers as JSON to -json, and every process's log under -logs.
//
// Exit status: 0 when every scenario ran (whether targets were met or not:
// they are measurements), 1 when a scenario could not run, Caddy crashed or
// stopped answering, a reply reached the wrong request, or a process was
// left running; 2 for bad flags; 130 when interrupted.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

type options struct {
	Short        bool
	Duration     time.Duration
	Scenarios    string
	Workers      int
	GetConc      int
	PostConc     int
	Work         time.Duration
	KillEvery    time.Duration
	FreezeFor    time.Duration
	RestartGap   time.Duration
	ReplyTimeout time.Duration
	Retries      int
	Heartbeat    string
	Timeout      time.Duration
	Caddy        string
	Worker       string
	Config       string
	MD           string
	JSON         string
	Logs         string
}

func main() { os.Exit(run()) }

func run() int {
	var o options
	flag.BoolVar(&o.Short, "short", false, "short mode: 8 s per scenario (explicit -duration wins)")
	flag.DurationVar(&o.Duration, "duration", 30*time.Second, "load per scenario")
	flag.StringVar(&o.Scenarios, "scenarios", "", "comma-separated subset of kill,freeze,restart,hung (default all)")
	flag.IntVar(&o.Workers, "workers", 4, "workers behind Caddy")
	flag.IntVar(&o.GetConc, "get-conc", 16, "concurrent GET clients")
	flag.IntVar(&o.PostConc, "post-conc", 16, "concurrent POST clients (at the same time as the GETs)")
	flag.DurationVar(&o.Work, "work", 5*time.Millisecond, "work per request in the workers (before the side effect)")
	flag.DurationVar(&o.KillEvery, "kill-every", 2*time.Second, "kill: interval between SIGKILLs")
	flag.DurationVar(&o.FreezeFor, "freeze-for", 10*time.Second, "freeze: SIGSTOP duration (at most duration-lead-2s)")
	flag.DurationVar(&o.RestartGap, "restart-gap", 500*time.Millisecond, "restart: pause after a replacement joined")
	flag.DurationVar(&o.ReplyTimeout, "reply-timeout", 10*time.Second, "Caddy's reply_timeout (REPLY_TIMEOUT)")
	flag.IntVar(&o.Retries, "retries", 1, "Caddy's retries (RETRIES)")
	flag.StringVar(&o.Heartbeat, "heartbeat", "200ms", "Caddy's ZMTP heartbeat (HEARTBEAT; the module's default)")
	flag.DurationVar(&o.Timeout, "client-timeout", 0, "per-request client timeout (default reply-timeout + 5s)")
	flag.StringVar(&o.Caddy, "caddy", "", "caddy binary (default <repo>/bin/caddy)")
	flag.StringVar(&o.Worker, "worker", "", "chaosworker binary (default <repo>/bin/chaosworker)")
	flag.StringVar(&o.Config, "config", "", "Caddyfile (default <repo>/caddyfiles/chaos.Caddyfile)")
	flag.StringVar(&o.MD, "md", "", `markdown report (default <repo>/bin/chaos.md; "-" = none)`)
	flag.StringVar(&o.JSON, "json", "", `JSON results (default <repo>/bin/chaos.json; "-" = none)`)
	flag.StringVar(&o.Logs, "logs", "", "directory for the processes' logs, emptied first (default <repo>/bin/chaos-logs)")
	flag.Parse()
	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "chaos: unexpected arguments %q\n", flag.Args())
		return 2
	}
	if o.Short && !set["duration"] {
		o.Duration = 8 * time.Second
	}
	if o.Timeout == 0 {
		o.Timeout = o.ReplyTimeout + 5*time.Second
	}
	if o.Duration < 5*time.Second || o.Workers < 2 || o.GetConc < 0 || o.PostConc < 0 || o.GetConc+o.PostConc == 0 {
		fmt.Fprintln(os.Stderr, "chaos: need -duration >= 5s, -workers >= 2, some clients")
		return 2
	}
	selected, err := selectScenarios(o.Scenarios)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 2
	}
	root := repoRoot()
	def := func(p *string, parts ...string) {
		if *p == "" {
			*p = filepath.Join(append([]string{root}, parts...)...)
		}
	}
	def(&o.Caddy, "bin", "caddy")
	def(&o.Worker, "bin", "chaosworker")
	def(&o.Config, "caddyfiles", "chaos.Caddyfile")
	def(&o.MD, "bin", "chaos.md")
	def(&o.JSON, "bin", "chaos.json")
	def(&o.Logs, "bin", "chaos-logs")
	for _, f := range []struct{ path, hint string }{
		{o.Caddy, "run make build"},
		{o.Worker, "run make build (or go build -o bin/chaosworker ./integration/chaosworker)"},
		{o.Config, "caddyfiles/chaos.Caddyfile"},
	} {
		if _, err := os.Stat(f.path); err != nil {
			fmt.Fprintf(os.Stderr, "chaos: %s is missing: %s\n", f.path, f.hint)
			return 1
		}
	}
	if err := os.RemoveAll(o.Logs); err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 1
	}
	if err := os.MkdirAll(o.Logs, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 1
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	defer stopAll()

	rep := &report{
		Started: time.Now(),
		Command: commandLine(),
		Mode:    map[bool]string{true: "short", false: "full"}[o.Short],
		Machine: fmt.Sprintf("%d CPUs, load average %s", runtime.NumCPU(), loadAvg()),
		Commit:  gitCommit(root),
		Opts:    o,
	}
	fmt.Printf("chaos: %d scenarios x %v of load, %d workers, %d GET + %d POST clients, work %v, reply_timeout %v, retries %d\n",
		len(selected), o.Duration, o.Workers, o.GetConc, o.PostConc, o.Work, o.ReplyTimeout, o.Retries)
	fmt.Printf("       logs in %s\n\n", o.Logs)
	for _, sc := range selected {
		fmt.Printf("== %s: %s\n", sc.key, sc.title)
		r := runScenario(ctx, &o, sc)
		if ctx.Err() != nil {
			fmt.Println("\ninterrupted: no report written")
			return 130
		}
		rep.Runs = append(rep.Runs, r)
		printProgress(os.Stdout, r)
	}
	rep.Seconds = time.Since(rep.Started).Seconds()
	rep.evaluate()
	fmt.Println()
	fmt.Print(rep.text())
	if o.MD != "-" {
		if err := os.WriteFile(o.MD, []byte(rep.markdown()), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "chaos:", err)
			return 1
		}
		fmt.Printf("\nmarkdown: %s\n", o.MD)
	}
	if o.JSON != "-" {
		if err := rep.writeJSON(o.JSON); err != nil {
			fmt.Fprintln(os.Stderr, "chaos:", err)
			return 1
		}
		fmt.Printf("json:     %s\n", o.JSON)
	}
	if rep.Broken() {
		fmt.Println("FAILED: see the errors above")
		return 1
	}
	return 0
}

func selectScenarios(list string) ([]scenario, error) {
	if list == "" || list == "all" {
		return scenarios, nil
	}
	var out []scenario
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		i := slices.IndexFunc(scenarios, func(s scenario) bool { return s.key == name })
		if i < 0 {
			return nil, fmt.Errorf("unknown scenario %q (kill, freeze, restart, hung)", name)
		}
		out = append(out, scenarios[i])
	}
	return out, nil
}

// scenarioRun is one scenario's run and what came out of it.
type scenarioRun struct {
	sc         scenario
	o          *options
	t0         time.Time
	duration   time.Duration
	injections []injection
	drains     []time.Duration // restart: SIGTERM to exit
	notes      []string
	after      func() // undoes the fault before the final check
	results    []result
	errs       []string // the run is invalid or something broke
	an         *analysis
	wall       time.Duration
}

func (r *scenarioRun) note(format string, args ...any) {
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

func runScenario(ctx context.Context, o *options, sc scenario) *scenarioRun {
	start := time.Now()
	r := &scenarioRun{sc: sc, o: o, duration: o.Duration}
	defer func() { r.wall = time.Since(start) }()
	c, err := newCluster(ctx, o, sc.key)
	if err != nil {
		r.errs = append(r.errs, "setup: "+err.Error())
		if c != nil {
			c.shutdown()
		}
		return r
	}
	r.t0 = time.Now()
	var wg sync.WaitGroup
	var injErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		injErr = sc.inject(ctx, c, r)
	}()
	r.results, _ = runLoad(ctx, loadOpts{
		URL: c.url, GetConc: o.GetConc, PostConc: o.PostConc, Duration: o.Duration, Timeout: o.Timeout,
	})
	wg.Wait()
	if injErr != nil {
		r.errs = append(r.errs, "fault injection: "+injErr.Error())
	}
	if r.after != nil {
		r.after()
	}
	if c.caddy.exited() {
		r.errs = append(r.errs, fmt.Sprintf("caddy exited during the run (%v):\n%s", c.caddy.err, indent(c.caddy.output())))
	} else if err := c.caddyAnswers(); err != nil {
		r.errs = append(r.errs, err.Error())
	}
	caddyErr, left := c.shutdown()
	if caddyErr != "" {
		r.errs = append(r.errs, caddyErr)
	}
	for _, l := range left {
		r.errs = append(r.errs, "process left running: "+l)
	}
	for _, inc := range c.incs {
		if inc.stopKilled && inc.fault == "" {
			r.note("%s needed SIGKILL to stop", inc.id)
		}
	}
	if lines := c.events.crashLines(); len(lines) > 0 {
		r.errs = append(r.errs, "caddy crashed: "+strings.Join(lines, "; "))
	}
	r.an = analyze(c, r)
	if r.an.get.BadBody+r.an.post.BadBody > 0 {
		r.errs = append(r.errs, fmt.Sprintf("%d replies reached the wrong request", r.an.get.BadBody+r.an.post.BadBody))
	}
	return r
}

// gitCommit is the repository's commit, "+changes" when module/ or
// workerkit/ differ from it ("" outside a git checkout).
func gitCommit(root string) string {
	out, err := exec.Command("git", "-C", root, "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return ""
	}
	c := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "-C", root, "status", "--porcelain", "--", "module", "workerkit", "integration/chaosworker").Output(); err == nil && len(bytes.TrimSpace(st)) > 0 {
		c += "+changes"
	}
	return c
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// commandLine is the command as typed (`go run` builds into a temporary
// directory, so its binary path is replaced by the package path).
func commandLine() string {
	args := []string{os.Args[0]}
	if strings.Contains(os.Args[0], "go-build") {
		args = []string{"go", "run", "./integration/chaos"}
	}
	for _, a := range os.Args[1:] {
		if a == "" || strings.ContainsAny(a, " \t\"'$\\") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		args = append(args, a)
	}
	return strings.Join(args, " ")
}
