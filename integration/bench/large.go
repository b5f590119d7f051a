package main

// The large-body benchmark (-large): one big download (echo /big) and one
// big upload (echo /upload) at a time, through Caddy's zmq handler with the
// control channel (reply credit, streamed uploads) and through Caddy's
// reverse_proxy to the same handlers served by net/http. Reported per case:
// throughput, and the peak RSS of Caddy and of the worker (sampled every
// 10 ms during the measured transfer), medians over interleaved rounds on
// fresh processes, and the ratio zmq / reverse_proxy.

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"
)

// LargeSpec makes a Case a large-body case.
type LargeSpec struct {
	Upload bool // POST /upload, else GET /big
}

// largeProbe is what a ready large-body target answers at largeProbePath.
const (
	largeProbePath = "big?bytes=16"
	largeProbeBody = "0123456789abcdef"
)

func largeCase(name, kind string, upload bool, setup func(context.Context, *Stack, *Env) (string, error)) Case {
	return Case{Name: name, Kind: kind, Default: true, Expect: largeProbeBody, Large: &LargeSpec{Upload: upload}, Setup: setup}
}

// setupZmqControlEcho: Caddy's zmq handler with the control channel in
// front of bin/echo-worker; ready once the worker joined the channel (from
// then on uploads are streamed and replies paced by credit).
func setupZmqControlEcho(ctx context.Context, s *Stack, env *Env) (string, error) {
	return setupZmqControlEchoWindow("")(ctx, s, env)
}

// setupZmqControlEchoWindow is setupZmqControlEcho with another
// reply_window ("" = the default, 1MiB).
func setupZmqControlEchoWindow(window string) func(context.Context, *Stack, *Env) (string, error) {
	return func(ctx context.Context, s *Stack, env *Env) (string, error) {
		return setupZmqControlEchoWith(ctx, s, env, window)
	}
}

func setupZmqControlEchoWith(ctx context.Context, s *Stack, env *Env, window string) (string, error) {
	opt := ""
	if window != "" {
		opt = "\n\t\treply_window " + window
	}
	return setupZmqControlEchoOpts(ctx, s, env, opt, nil)
}

// setupZmqControlEchoOpts adds opt to the zmq block and workerArgs to the
// worker's flags.
func setupZmqControlEchoOpts(ctx context.Context, s *Stack, env *Env, opt string, workerArgs []string) (string, error) {
	p, err := freePorts(3)
	if err != nil {
		return "", err
	}
	req, rep, ctl := tcpEndpoint(p[0]), tcpEndpoint(p[1]), tcpEndpoint(p[2])
	opts := fmt.Sprintf("\n\t\tcontrol_endpoint %s\n\t\tmax_request_body 4GiB", ctl) + opt
	url, err := startCaddy(s, env, false, fmt.Sprintf("zmq %s %s {%s\n\t}", req, rep, opts))
	if err != nil {
		return "", err
	}
	caddy := s.procs[len(s.procs)-1]
	args := append([]string{"-frontend", req + "," + rep + "," + ctl}, workerArgs...)
	if _, err := s.Start("echo-worker (zmq)", exec.Command(env.Echo, args...)); err != nil {
		return "", err
	}
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(caddy.Output(), "worker joined the control channel") {
		if err := s.Check(); err != nil {
			return "", err
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("the echo worker did not join Caddy's control channel within 30s\n%s", s.Logs())
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return url, nil
}

// setupReverseProxyEcho: Caddy's reverse_proxy in front of the same
// handlers served by net/http.
func setupReverseProxyEcho(ctx context.Context, s *Stack, env *Env) (string, error) {
	p, err := freePorts(1)
	if err != nil {
		return "", err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", p[0])
	if _, err := s.Start("echo (net/http)", echoHTTPCommand(env, addr)); err != nil {
		return "", err
	}
	return startCaddy(s, env, false, "reverse_proxy "+addr)
}

// echoHTTPCommand serves echo's handlers with plain net/http on addr.
func echoHTTPCommand(env *Env, addr string) *exec.Cmd {
	return exec.Command(env.Echo, "-http", addr)
}

// echoBigPattern is echo's /big pattern (workerkit/examples/echo), checked
// at the start of each download.
const echoBigPattern = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/\n"

// ---------------------------------------------------------------------------
// Running.

// LargeRun is one measured transfer.
type LargeRun struct {
	Round        int     `json:"round"`
	Position     int     `json:"position"`
	Bytes        int64   `json:"bytes"`
	Seconds      float64 `json:"seconds"`
	MBps         float64 `json:"mb_per_s"` // 10^6 bytes per second
	CaddyPeakRSS int64   `json:"caddy_peak_rss"`
	CaddyBaseRSS int64   `json:"caddy_base_rss"`
	WorkerPeak   int64   `json:"worker_peak_rss"`
	WorkerBase   int64   `json:"worker_base_rss"`
	Samples      int     `json:"rss_samples"`
	// CPU seconds per GiB moved, per process: independent of how busy
	// the (shared) machine was, unlike MB/s.
	CaddyCPU  float64 `json:"caddy_cpu_s_per_gib"`
	WorkerCPU float64 `json:"worker_cpu_s_per_gib"`
	ClientCPU float64 `json:"client_cpu_s_per_gib"` // this program
	Error     string  `json:"error,omitempty"`
}

// LargeCaseReport sums up one case.
type LargeCaseReport struct {
	Name            string     `json:"name"`
	Kind            string     `json:"kind"`
	Direction       string     `json:"direction"`
	MBpsMedian      float64    `json:"mb_per_s_median"`
	MBpsMin         float64    `json:"mb_per_s_min"`
	MBpsMax         float64    `json:"mb_per_s_max"`
	CaddyPeakMedian int64      `json:"caddy_peak_rss_median"`
	CaddyGrowthMed  int64      `json:"caddy_rss_growth_median"`
	WorkerPeakMed   int64      `json:"worker_peak_rss_median"`
	WorkerGrowthMed int64      `json:"worker_rss_growth_median"`
	CaddyCPUMed     float64    `json:"caddy_cpu_s_per_gib_median"`
	WorkerCPUMed    float64    `json:"worker_cpu_s_per_gib_median"`
	ClientCPUMed    float64    `json:"client_cpu_s_per_gib_median"`
	OK              int        `json:"runs_ok"`
	Failed          int        `json:"runs_failed"`
	Runs            []LargeRun `json:"runs"`
}

// LargeReport is what -large prints and writes.
type LargeReport struct {
	Started  time.Time         `json:"started"`
	Command  string            `json:"command"`
	Machine  Machine           `json:"machine"`
	Rounds   int               `json:"rounds"`
	Bytes    int64             `json:"bytes"`
	Warmup   int64             `json:"warmup_bytes"`
	EchoHTTP string            `json:"echo_http"` // what served reverse_proxy's upstream
	Cases    []LargeCaseReport `json:"cases"`
	Ratios   []Check           `json:"ratios"`
	Failed   bool              `json:"failed"`
}

// runLarge runs the large-body cases; it returns the exit status.
func runLarge(ctx context.Context, o options, cases []Case, env *Env, root string) int {
	rep := &LargeReport{Started: time.Now(), Command: commandLine(), Rounds: o.Rounds, Bytes: o.LargeBytes, Warmup: o.LargeWarmup}
	rep.Machine = machineInfo(root, env, o.Wrk)
	rep.EchoHTTP = env.Echo + " -http"
	m := rep.Machine
	fmt.Printf("command:  %s\n", rep.Command)
	fmt.Printf("machine:  %d CPUs, %s, kernel %s\n", m.CPUs, m.CPUModel, m.Kernel)
	fmt.Printf("software: %s; caddy %s\n", m.GoVersion, m.Caddy)
	fmt.Printf("commit:   %s\n", m.Commit)
	fmt.Printf("load:     one %s transfer per run (after a %s warm-up), %d interleaved round(s), fresh processes per run\n",
		fmtBytes(o.LargeBytes), fmtBytes(o.LargeWarmup), o.Rounds)
	fmt.Printf("upstream: reverse_proxy -> %s\n\n", rep.EchoHTTP)

	results := make([][]LargeRun, len(cases))
	interrupted := false
rounds:
	for r := 0; r < o.Rounds; r++ {
		for i := range cases {
			ci := (i + r) % len(cases)
			c := cases[ci]
			run := runLargeCase(ctx, c, env, o)
			if ctx.Err() != nil {
				interrupted = true
				break rounds
			}
			run.Round, run.Position = r+1, i+1
			results[ci] = append(results[ci], run)
			if run.Error != "" {
				fmt.Printf("round %d/%d  %-22s FAILED: %s\n", r+1, o.Rounds, c.Name, firstLine(run.Error))
			} else {
				fmt.Printf("round %d/%d  %-24s %5.0f MB/s  caddy peak %s (+%s), %.2f CPU s/GiB  worker peak %s (+%s), %.2f CPU s/GiB\n",
					r+1, o.Rounds, c.Name, run.MBps,
					fmtBytes(run.CaddyPeakRSS), fmtBytes(run.CaddyPeakRSS-run.CaddyBaseRSS), run.CaddyCPU,
					fmtBytes(run.WorkerPeak), fmtBytes(run.WorkerPeak-run.WorkerBase), run.WorkerCPU)
			}
		}
	}
	rep.finish(cases, results)
	return conclude(rep, rep.print, rep.Failed, interrupted, o.Out)
}

func runLargeCase(ctx context.Context, c Case, env *Env, o options) LargeRun {
	var run LargeRun
	if o.WaitQuiet > 0 {
		waitQuiet(ctx, o.WaitQuiet)
	}
	var s *Stack
	var base string
	for attempt := 1; ; attempt++ {
		var err error
		if s, err = newStack(env.WorkerEnv); err != nil {
			run.Error = err.Error()
			return run
		}
		base, err = c.Setup(ctx, s, env)
		if err == nil {
			_, err = waitReady(ctx, s, base+largeProbePath, c.expect(), o.Timeout)
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
	var caddy, worker *Proc
	for _, p := range s.procs {
		if p.Name == "caddy" {
			caddy = p
		} else {
			worker = p
		}
	}
	client := &http.Client{Transport: &http.Transport{
		DisableCompression: true,
		WriteBufferSize:    256 << 10,
		ReadBufferSize:     256 << 10,
	}}
	defer client.CloseIdleConnections()
	transfer := func(n int64) (time.Duration, error) {
		if c.Large.Upload {
			return uploadOnce(ctx, client, base+"upload", n)
		}
		return downloadOnce(ctx, client, base+fmt.Sprintf("big?bytes=%d", n), n)
	}
	if o.LargeWarmup > 0 {
		if _, err := transfer(o.LargeWarmup); err != nil {
			run.Error = "warm-up: " + err.Error()
			return run
		}
	}
	cpu0 := [3]float64{procCPU(caddy.cmd.Process.Pid), procCPU(worker.cmd.Process.Pid), selfCPU()}
	sampler := newRSSSampler(caddy.cmd.Process.Pid, worker.cmd.Process.Pid)
	d, err := transfer(o.LargeBytes)
	peaks, bases, samples := sampler.stop()
	gib := float64(o.LargeBytes) / (1 << 30)
	run.CaddyCPU = (procCPU(caddy.cmd.Process.Pid) - cpu0[0]) / gib
	run.WorkerCPU = (procCPU(worker.cmd.Process.Pid) - cpu0[1]) / gib
	run.ClientCPU = (selfCPU() - cpu0[2]) / gib
	if err == nil {
		err = s.Check()
	}
	if o.Verbose {
		fmt.Print(s.Logs())
	}
	if err != nil {
		run.Error = err.Error()
		return run
	}
	run.Bytes, run.Seconds, run.MBps = o.LargeBytes, d.Seconds(), float64(o.LargeBytes)/1e6/d.Seconds()
	run.CaddyPeakRSS, run.WorkerPeak = peaks[0], peaks[1]
	run.CaddyBaseRSS, run.WorkerBase = bases[0], bases[1]
	run.Samples = samples
	return run
}

func downloadOnce(ctx context.Context, client *http.Client, url string, n int64) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	head := make([]byte, len(echoBigPattern))
	if _, err := io.ReadFull(resp.Body, head); err != nil || string(head) != echoBigPattern {
		return 0, fmt.Errorf("GET %s: the body does not start with echo's pattern (%q, %v)", url, head, err)
	}
	got, err := io.CopyBuffer(io.Discard, resp.Body, make([]byte, 256<<10))
	d := time.Since(start)
	got += int64(len(head))
	if err != nil {
		return 0, fmt.Errorf("GET %s: after %d bytes: %v", url, got, err)
	}
	if got != n {
		return 0, fmt.Errorf("GET %s: %d bytes, want %d", url, got, n)
	}
	return d, nil
}

// zeroSource is n bytes of a cheap, incompressible-enough block, without
// holding them; as light as possible on the client's CPU.
type zeroSource struct {
	left  int64
	block []byte
}

func (z *zeroSource) Read(p []byte) (int, error) {
	if z.left <= 0 {
		return 0, io.EOF
	}
	n := 0
	for len(p) > 0 && z.left > 0 {
		k := copy(p, z.block[:min(int64(len(z.block)), z.left)])
		p, z.left, n = p[k:], z.left-int64(k), n+k
	}
	return n, nil
}

var uploadBlock = func() []byte {
	b := make([]byte, 256<<10)
	x := uint32(2463534242)
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}()

func uploadOnce(ctx context.Context, client *http.Client, url string, n int64) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, &zeroSource{left: n, block: uploadBlock})
	req.ContentLength = n
	req.Header.Set("Content-Type", "application/octet-stream")
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	d := time.Since(start)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("POST %s: %s %q", url, resp.Status, truncate(string(b), 300))
	}
	var r struct {
		Bytes int64 `json:"bytes"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return 0, fmt.Errorf("POST %s: %q: %v", url, truncate(string(b), 300), err)
	}
	if r.Bytes != n {
		hint := ""
		if r.Bytes == 0 {
			hint = " (the worker got an empty body: workerkit streamed uploads not available?)"
		}
		return 0, fmt.Errorf("POST %s: the handler read %d bytes, want %d%s", url, r.Bytes, n, hint)
	}
	return d, nil
}

// rssSampler samples the VmRSS of some processes every 10 ms.
type rssSampler struct {
	pids        []int
	base, peak  []int64
	n           int
	quit, ended chan struct{}
	mu          sync.Mutex
}

func newRSSSampler(pids ...int) *rssSampler {
	s := &rssSampler{pids: pids, base: make([]int64, len(pids)), peak: make([]int64, len(pids)),
		quit: make(chan struct{}), ended: make(chan struct{})}
	for i, pid := range pids {
		s.base[i] = vmRSS(pid)
		s.peak[i] = s.base[i]
	}
	go func() {
		defer close(s.ended)
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			s.sample()
			select {
			case <-s.quit:
				s.sample()
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *rssSampler) sample() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	for i, pid := range s.pids {
		s.peak[i] = max(s.peak[i], vmRSS(pid))
	}
}

func (s *rssSampler) stop() (peak, base []int64, samples int) {
	close(s.quit)
	<-s.ended
	return s.peak, s.base, s.n
}

// procCPU is a process's user+system CPU time in seconds.
func procCPU(pid int) float64 { return float64(procTicks(pid)) / ticksPerSecond }

// selfCPU is this program's user+system CPU time in seconds.
func selfCPU() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// vmRSS is a process's resident set size in bytes (0 if unknown).
func vmRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			if f := strings.Fields(rest); len(f) == 2 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

// ---------------------------------------------------------------------------
// Report.

func (rep *LargeReport) finish(cases []Case, results [][]LargeRun) {
	for i, c := range cases {
		cr := LargeCaseReport{Name: c.Name, Kind: c.Kind, Direction: "download", Runs: results[i]}
		if c.Large.Upload {
			cr.Direction = "upload"
		}
		var mbps []float64
		var cpeak, cgrow, wpeak, wgrow []int64
		var ccpu, wcpu, lcpu []float64
		for _, r := range results[i] {
			if r.Error != "" {
				cr.Failed++
				rep.Failed = true
				continue
			}
			cr.OK++
			mbps = append(mbps, r.MBps)
			cpeak = append(cpeak, r.CaddyPeakRSS)
			cgrow = append(cgrow, r.CaddyPeakRSS-r.CaddyBaseRSS)
			wpeak = append(wpeak, r.WorkerPeak)
			wgrow = append(wgrow, r.WorkerPeak-r.WorkerBase)
			ccpu, wcpu, lcpu = append(ccpu, r.CaddyCPU), append(wcpu, r.WorkerCPU), append(lcpu, r.ClientCPU)
		}
		if len(mbps) > 0 {
			cr.MBpsMedian, cr.MBpsMin, cr.MBpsMax = median(mbps), slices.Min(mbps), slices.Max(mbps)
			cr.CaddyPeakMedian, cr.CaddyGrowthMed = medianInt(cpeak), medianInt(cgrow)
			cr.WorkerPeakMed, cr.WorkerGrowthMed = medianInt(wpeak), medianInt(wgrow)
			cr.CaddyCPUMed, cr.WorkerCPUMed, cr.ClientCPUMed = median(ccpu), median(wcpu), median(lcpu)
		}
		rep.Cases = append(rep.Cases, cr)
	}
	// zmq / reverse_proxy per direction: throughput, and Caddy's and the
	// worker's CPU per GiB (reverse_proxy's over zmq's, so that > 1 means
	// zmq is cheaper, like the MB/s ratio).
	for _, dir := range []string{"download", "upload"} {
		var z, rp *LargeCaseReport
		for i := range rep.Cases {
			cr := &rep.Cases[i]
			if cr.Direction != dir || cr.OK == 0 {
				continue
			}
			switch cr.Kind {
			case "zmq+control":
				z = cr
			case "reverse_proxy":
				rp = cr
			}
		}
		ck := Check{Group: dir, Name: "zmq+control / reverse_proxy (MB/s)"}
		if z == nil || rp == nil {
			ck.Status, ck.Shown = "n/a", "n/a"
		} else {
			ck.Value = z.MBpsMedian / rp.MBpsMedian
			ck.Shown = fmt.Sprintf("%.2f", ck.Value)
			zc, rc := z.CaddyCPUMed+z.WorkerCPUMed, rp.CaddyCPUMed+rp.WorkerCPUMed
			if zc > 0 && rc > 0 {
				ck.ByCPU = fmt.Sprintf("%.2f", rc/zc)
				ck.Note = fmt.Sprintf("Caddy+worker CPU per GiB: zmq %.2f s, reverse_proxy %.2f s", zc, rc)
			}
		}
		rep.Ratios = append(rep.Ratios, ck)
		rep.Ratios = append(rep.Ratios, curveLargeCheck(rep.Cases, dir))
	}
}

func (rep *LargeReport) print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "case\tMB/s median\tmin\tmax\tCaddy peak RSS\t(growth)\tworker peak RSS\t(growth)\tCPU s/GiB: Caddy\tworker\tclient\truns\t\n")
	for _, c := range rep.Cases {
		if c.OK == 0 {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t0/%d\t\n", c.Name, c.Failed)
			continue
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%.0f\t%s\t+%s\t%s\t+%s\t%.2f\t%.2f\t%.2f\t%d/%d\t\n", c.Name,
			c.MBpsMedian, c.MBpsMin, c.MBpsMax, fmtBytes(c.CaddyPeakMedian), fmtBytes(c.CaddyGrowthMed),
			fmtBytes(c.WorkerPeakMed), fmtBytes(c.WorkerGrowthMed), c.CaddyCPUMed, c.WorkerCPUMed, c.ClientCPUMed,
			c.OK, c.OK+c.Failed)
	}
	tw.Flush()
	fmt.Fprintln(w)
	for _, r := range rep.Ratios {
		fmt.Fprintf(w, "%-9s %s: %s", r.Group, r.Name, r.Shown)
		if r.ByCPU != "" {
			fmt.Fprintf(w, "; by CPU per GiB: %s (%s)", r.ByCPU, r.Note)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "\n(MB = 10^6 bytes; RSS sampled every 10 ms during the measured transfer; growth = peak - RSS before it; %d CPUs shared by client, Caddy and worker)\n", runtime.NumCPU())
}

func medianInt(v []int64) int64 {
	f := make([]float64, len(v))
	for i, x := range v {
		f[i] = float64(x)
	}
	return int64(median(f))
}

func fmtBytes(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	default:
		return fmt.Sprintf("%d KiB", n>>10)
	}
}

// largeFlags adds the -large options.
func largeFlags(o *options) {
	flag.Int64Var(&o.LargeBytes, "large-bytes", 256<<20, "bytes per measured transfer with -large")
	flag.Int64Var(&o.LargeWarmup, "large-warmup", 16<<20, "bytes of the unmeasured transfer before each measurement with -large (0 = none)")
}

// conclude ends a run of the large-body or WebSocket mode: it prints the
// report, writes it to out as JSON (unless out is "-" or the run was
// interrupted) and returns the exit code.
func conclude(rep any, print func(io.Writer), failed, interrupted bool, out string) int {
	fmt.Println()
	print(os.Stdout)
	if interrupted {
		fmt.Println("\ninterrupted: the report covers the runs done so far; no files written")
		return 130
	}
	if out != "-" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(out, append(b, '\n'), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		fmt.Printf("\nwrote %s\n", out)
	}
	if failed {
		fmt.Println("FAILED: some runs failed (see above)")
		return 1
	}
	return 0
}
