// Command bench compares the zmq handler with its alternatives in one run:
//
//	zmq            bin/caddy `zmq` -> bin/hello-worker (workerkit)
//	reverse_proxy  bin/caddy `reverse_proxy` -> bin/hello-worker -http (net/http, same handler)
//	respond        bin/caddy `respond "Hello, world!"` (the most any Caddy handler serves)
//	mongrel2       Mongrel2 1.12 -> bin/hello-worker
//	direct         wrk straight at bin/hello-worker -http
//	zmq/floor      bin/caddy `zmq` -> bin/floor-worker (single loop: recv, format, send)
//	mongrel2/floor Mongrel2 1.12 -> bin/floor-worker
//
// plus HTTPS variants of zmq, reverse_proxy and mongrel2. Rounds are
// interleaved (every round runs every case once, in rotating order), each run
// on fresh processes and free ports, and the report gives medians over the
// rounds, ratios and the performance targets.
//
//	go run ./integration/bench [-quick] [-rounds 5] [-duration 5s] [-conns 32] [-cases zmq,respond]
//
// With -large it measures big bodies instead (large.go): a 256 MiB download
// (echo /big) and a 256 MiB upload (echo /upload), one at a time, through
// zmq with the control channel and through reverse_proxy to the same
// handlers served by net/http; MB/s and peak RSS of Caddy and of the
// worker, medians, ratios; written to bin/bench-large.json.
//
//	go run ./integration/bench -large [-quick] [-rounds 5] [-large-bytes 268435456]
//
// With -ws (or -cases naming only ws-* cases) it measures WebSockets instead
// (ws.go): a small echo (ws-echo, messages/s) and large messages (ws-large,
// MB/s), each through zmq to bin/wschat-worker's /echo and through
// reverse_proxy to the same echo served by net/http (bin/wsecho-http); a
// load generator in this program keeps the sockets busy, one message in
// flight per socket; written to bin/bench-ws.json.
//
//	go run ./integration/bench -ws [-rounds 3] [-duration 5s] [-conns 32] [-ws-large-bytes 1048576]
//
// Needs `make build` (bin/caddy, bin/hello-worker), wrk and mongrel2-core.
// Writes bin/bench.json (every run, machine, checks) and bin/bench.svg (bar
// chart). Each run also records how much CPU other processes took meanwhile
// (a shared machine makes numbers incomparable; such runs are marked NOISY).
//
// Exit status: 0 when every run succeeded without errors (performance
// targets missed or not), 1 when a run failed or wrk counted socket errors or
// non-2xx/3xx responses, 2 for bad flags, 130 when interrupted (nothing is
// written then).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

type options struct {
	Rounds   int
	Duration time.Duration
	Warmup   time.Duration
	// FrontFloorSpin is frontfloor's -spin in both its cases.
	FrontFloorSpin time.Duration
	Threads        int
	Conns          int
	Cases          string
	Large          bool
	Quick          bool
	Bin            string
	Wrk            string
	Out            string
	SVG            string
	Timeout        time.Duration
	Verbose        bool
	List           bool
	M2Ciphers      string
	WorkerEnv      string
	WaitQuiet      time.Duration
	// -large
	LargeBytes  int64
	LargeWarmup int64
	// -ws
	WS           bool
	WSSmallBytes int
	WSLargeBytes int
	WSLargeConns int
	WSBusyConns  int
}

func main() {
	os.Exit(run())
}

func run() int {
	var o options
	flag.IntVar(&o.Rounds, "rounds", 5, "rounds; each runs every case once, in rotating order")
	flag.DurationVar(&o.Duration, "duration", 5*time.Second, "measured wrk duration per run (whole seconds)")
	flag.DurationVar(&o.Warmup, "warmup", time.Second, "unmeasured wrk run before each measurement (0 = none)")
	flag.DurationVar(&o.FrontFloorSpin, "frontfloor-spin", 0, "busy CPU per request added to both frontfloor cases (frontfloor -spin), to weigh its HTTP side like Caddy's")
	flag.IntVar(&o.Threads, "threads", 1, "wrk -t")
	flag.IntVar(&o.Conns, "conns", 32, "wrk -c")
	flag.StringVar(&o.Cases, "cases", "", "comma-separated case names, or \"all\" (default: the standard set; see -list)")
	flag.BoolVar(&o.Large, "large", false, "large-body cases instead of hello world: 256 MiB downloads and uploads, zmq+control vs reverse_proxy (needs bin/echo-worker)")
	largeFlags(&o)
	wsFlags(&o)
	flag.BoolVar(&o.Quick, "quick", false, "smoke test: 1 round of 2 s (explicit -rounds/-duration win)")
	flag.StringVar(&o.Bin, "bin", "", "directory with caddy and hello-worker (default <repo>/bin)")
	flag.StringVar(&o.Wrk, "wrk", "wrk", "wrk binary")
	flag.StringVar(&o.Out, "out", "", "JSON results file (default <repo>/bin/bench.json; \"-\" = none)")
	flag.StringVar(&o.SVG, "svg", "", "SVG bar chart file (default <repo>/bin/bench.svg; \"-\" = none)")
	flag.DurationVar(&o.Timeout, "start-timeout", 30*time.Second, "how long a case may take to become ready")
	flag.BoolVar(&o.Verbose, "v", false, "print wrk's output and the processes' logs of every run")
	flag.BoolVar(&o.List, "list", false, "list the cases and exit")
	flag.DurationVar(&o.WaitQuiet, "wait-quiet", 0, "before each run, wait up to this long for a second with < 10% CPU busy (shared machines; 0 = don't)")
	flag.StringVar(&o.WorkerEnv, "worker-env", "", "comma-separated NAME=VALUE settings for the workers' environment (every process but Caddy and Mongrel2), e.g. GOMAXPROCS=1")
	flag.StringVar(&o.M2Ciphers, "m2-ciphers", "", "Mongrel2 ssl_ciphers setting, mbedTLS names separated by spaces (default: Mongrel2's own preference)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "bench: unexpected arguments %q\n", flag.Args())
		return 2
	}
	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.Quick {
		if !set["rounds"] {
			o.Rounds = 1
		}
		if !set["duration"] {
			o.Duration = 2 * time.Second
		}
	}

	table, workload := helloCases(), "hello world"
	if wsOnly(o.Cases) { // -cases ws-echo/zmq,... implies -ws
		o.WS = true
	}
	if o.WS && o.Large {
		fmt.Fprintln(os.Stderr, "bench: -ws and -large are separate runs")
		return 2
	}
	if o.WS {
		workload = "websockets"
		table = wsCases()
	}
	if o.Large {
		workload = "large bodies"
		table = largeCases()
	}
	if o.List {
		for _, c := range table {
			def := ""
			if c.Default {
				def = " (default)"
			}
			fmt.Printf("%-22s %-6s %s%s\n", c.Name, c.Group(), c.Kind, def)
		}
		return 0
	}
	cases, err := selectCases(table, o.Cases)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 2
	}
	if o.Large && (o.LargeBytes < int64(len(largeProbeBody)) || o.LargeWarmup < 0) {
		fmt.Fprintln(os.Stderr, "bench: need -large-bytes >= 16 and -large-warmup >= 0")
		return 2
	}
	if o.WS && (o.WSSmallBytes < 1 || o.WSLargeBytes < 1 || o.WSLargeConns < 1 || o.WSBusyConns < 1) {
		fmt.Fprintln(os.Stderr, "bench: need -ws-bytes, -ws-large-bytes, -ws-large-conns and -ws-busy-conns >= 1")
		return 2
	}
	if o.Rounds < 1 || o.Duration < time.Second || o.Conns < 1 || o.Threads < 1 || o.Threads > o.Conns {
		fmt.Fprintln(os.Stderr, "bench: need -rounds >= 1, -duration >= 1s, 1 <= -threads <= -conns")
		return 2
	}

	root := repoRoot()
	if o.Bin == "" {
		o.Bin = filepath.Join(root, "bin")
	}
	if o.Out == "" {
		o.Out = filepath.Join(root, "bin", "bench.json")
		if o.Large {
			o.Out = filepath.Join(root, "bin", "bench-large.json")
		}
		if o.WS {
			o.Out = filepath.Join(root, "bin", "bench-ws.json")
		}
	}
	if o.SVG == "" {
		o.SVG = filepath.Join(root, "bin", "bench.svg")
	}
	env, wrk, err := findTools(o, cases)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.Large {
		return runLarge(ctx, o, cases, env, root)
	}
	if o.WS {
		return runWS(ctx, o, cases, env, root)
	}

	rep := &Report{
		Started: time.Now(),
		Command: commandLine(),
		Machine: machineInfo(root, env, wrk.Path),
		Params: Params{Rounds: o.Rounds, DurationS: o.Duration.Seconds(), WarmupS: o.Warmup.Seconds(),
			Threads: o.Threads, Conns: o.Conns, Workload: workload, WaitQuiet: o.WaitQuiet.Seconds(),
			FrontFloorSpinUS: float64(o.FrontFloorSpin) / float64(time.Microsecond)},
	}
	printHeader(os.Stdout, rep)

	results := make([][]Run, len(cases))
	interrupted := false
rounds:
	for r := 0; r < o.Rounds; r++ {
		for i := range cases {
			ci := (i + r) % len(cases) // rotate the order every round
			c := cases[ci]
			run := runCase(ctx, c, env, wrk, o)
			if ctx.Err() != nil { // interrupted: this run does not count
				interrupted = true
				break rounds
			}
			run.Round, run.Position = r+1, i+1
			results[ci] = append(results[ci], run)
			printRun(os.Stdout, r+1, o.Rounds, c, run)
		}
	}

	rep.finish(cases, results)
	fmt.Println()
	printReport(os.Stdout, rep)
	if interrupted {
		fmt.Println("\ninterrupted: the report covers the runs done so far; no files written")
		return 130
	}
	if err := rep.writeFiles(o.Out, o.SVG); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	if rep.Failed {
		fmt.Println("FAILED: some runs failed or had errors (see above)")
		return 1
	}
	return 0
}

// Run is one measurement of one case.
type Run struct {
	Round        int         `json:"round"`
	Position     int         `json:"position"` // place in the round's order
	URL          string      `json:"url,omitempty"`
	SetupSeconds float64     `json:"setup_seconds"`
	Probe        probeResult `json:"probe"`
	Wrk          *WrkResult  `json:"wrk,omitempty"`
	// CPU splits the machine's CPU during the measurement: other processes
	// (noise), idle, the measured processes, wrk (-1: unknown).
	CPU   cpuShares `json:"cpu"`
	Error string    `json:"error,omitempty"`
}

// runCase sets a case up on fresh processes (retrying on a port taken in the
// meantime), warms up, measures, and tears everything down.
func runCase(ctx context.Context, c Case, env *Env, wrk WrkParams, o options) Run {
	var run Run
	wrk.Method = c.Method
	if o.WaitQuiet > 0 {
		busy, quiet := waitQuiet(ctx, o.WaitQuiet)
		if !quiet && ctx.Err() == nil {
			fmt.Printf("  (machine still busy after waiting %v: %s of the CPU; running %s anyway)\n", o.WaitQuiet, fmtPercent(busy), c.Name)
		}
	}
	start := time.Now()
	var s *Stack
	for attempt := 1; ; attempt++ {
		var err error
		if s, err = newStack(env.WorkerEnv); err != nil {
			run.Error = err.Error()
			return run
		}
		run.URL, err = c.Setup(ctx, s, env)
		if err == nil {
			run.Probe, err = waitReady(ctx, s, run.URL, c.expect(), o.Timeout)
		}
		if err == nil {
			break
		}
		s.Close()
		if errAddrInUse(err) && attempt < 3 && ctx.Err() == nil {
			continue
		}
		run.Error = "setup: " + err.Error()
		return run
	}
	defer s.Close()
	run.SetupSeconds = time.Since(start).Seconds()

	if o.Warmup > 0 {
		if _, _, err := runWrk(ctx, wrk, o.Warmup, run.URL); err != nil {
			run.Error = "warm-up: " + err.Error()
			return run
		}
	}
	meter := startCPUMeter(s)
	res, raw, err := runWrk(ctx, wrk, o.Duration, run.URL)
	run.CPU = meter.shares(s, time.Duration(res.CPUSeconds*float64(time.Second)), res.Requests)
	if err == nil {
		err = s.Check() // a process that died under load invalidates the run
	}
	if o.Verbose {
		fmt.Printf("%s\n%s", raw, s.Logs())
	}
	if err != nil {
		run.Error = err.Error()
		return run
	}
	run.Wrk = &res
	return run
}

// wsOnly: a -cases list of WebSocket cases only.
func wsOnly(list string) bool {
	if list == "" || list == "all" {
		return false
	}
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		if !strings.HasPrefix(name, "ws-") && !strings.HasPrefix(name, "wss-") {
			return false
		}
	}
	return true
}

func selectCases(table []Case, list string) ([]Case, error) {
	if list == "" || list == "all" {
		var out []Case
		for _, c := range table {
			if c.Default || list == "all" {
				out = append(out, c)
			}
		}
		return out, nil
	}
	var out []Case
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		i := slices.IndexFunc(table, func(c Case) bool { return c.Name == name })
		if i < 0 {
			return nil, fmt.Errorf("unknown case %q (see -list)", name)
		}
		out = append(out, table[i])
	}
	return out, nil
}

// findTools locates the binaries the selected cases need.
func findTools(o options, cases []Case) (*Env, WrkParams, error) {
	wenv, err := parseWorkerEnv(o.WorkerEnv)
	if err != nil {
		return nil, WrkParams{}, err
	}
	env := &Env{
		Caddy:          filepath.Join(o.Bin, "caddy"),
		Hello:          filepath.Join(o.Bin, "hello-worker"),
		Floor:          filepath.Join(o.Bin, "floor-worker"),
		FrontFloor:     filepath.Join(o.Bin, "frontfloor"),
		FrontFloorSpin: o.FrontFloorSpin,
		Echo:           filepath.Join(o.Bin, "echo-worker"),

		WSChat:     filepath.Join(o.Bin, "wschat-worker"),
		WSEchoHTTP: filepath.Join(o.Bin, "wsecho-http"),

		M2Ciphers: o.M2Ciphers,
		WorkerEnv: wenv,
	}
	need := map[string]string{env.Hello: "run make build"}
	if o.Large {
		need = map[string]string{env.Echo: "run make build", env.Caddy: "run make build"}
	}
	if o.WS {
		need = map[string]string{}
		for _, c := range cases {
			switch {
			case c.Kind == "reverse_proxy":
				need[env.WSEchoHTTP] = "run make build"
			case !strings.HasSuffix(c.Kind, "+floor"):
				need[env.WSChat] = "run make build"
			}
		}
	}
	for _, c := range cases {
		switch c.Kind {
		case "zmq", "reverse_proxy", "respond", "zmq+control", "zmq+floor", "zmq+floor-handler":
			need[env.Caddy] = "run make build"
		case "frontfloor", "frontfloor-respond":
			need[env.FrontFloor] = "run make build"
		case "mongrel2", "mongrel2+floor", "mongrel2+floor-handler":
			env.M2sh, env.Mongrel2 = "m2sh", "mongrel2"
			need["m2sh"], need["mongrel2"] = "run make deps (mongrel2-core)", "run make deps (mongrel2-core)"
		}
		if strings.Contains(c.Kind, "+floor") || c.Kind == "frontfloor" {
			need[env.Floor] = "run make build"
		}
	}
	if !o.Large && !o.WS {
		need[o.Wrk] = "run make deps (wrk)"
	}
	var missing []string
	for bin, hint := range need {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, fmt.Sprintf("%s not found: %s", bin, hint))
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return nil, WrkParams{}, errors.New(strings.Join(missing, "; "))
	}
	wrk := WrkParams{Path: o.Wrk, Threads: o.Threads, Conns: o.Conns, Duration: o.Duration}
	return env, wrk, nil
}

// parseWorkerEnv splits -worker-env into NAME=VALUE settings.
func parseWorkerEnv(list string) ([]string, error) {
	if list == "" {
		return nil, nil
	}
	var out []string
	for _, kv := range strings.Split(list, ",") {
		kv = strings.TrimSpace(kv)
		if name, _, ok := strings.Cut(kv, "="); !ok || name == "" {
			return nil, fmt.Errorf("-worker-env: %q is not NAME=VALUE", kv)
		}
		out = append(out, kv)
	}
	return out, nil
}

// repoRoot is the directory of the go.mod above the working directory
// (`make bench` runs from it), or the working directory.
func repoRoot() string {
	wd, err := os.Getwd()
	if err != nil {
		return "."
	}
	for d := wd; ; d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil &&
			strings.Contains(string(b), "module github.com/zmqbridge/caddy-zmq") {
			return d
		}
		if filepath.Dir(d) == d {
			return wd
		}
	}
}

// commandLine is the command as typed: `go run` builds into a temporary
// directory, so its binary path is replaced by the package path.
func commandLine() string {
	args := []string{os.Args[0]}
	if strings.Contains(os.Args[0], "go-build") {
		args = []string{"go", "run", "./integration/bench"}
	}
	for _, a := range os.Args[1:] {
		if a == "" || strings.ContainsAny(a, " \t\"'$\\") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		args = append(args, a)
	}
	return strings.Join(args, " ")
}
