package main

// WebSocket cases (-ws): an echo through Caddy's `zmq` to
// bin/wschat-worker's /echo (workerkit) and through Caddy's reverse_proxy
// to the same echo served by net/http (bin/wsecho-http). A load generator
// in this program keeps -conns sockets (ws-echo, and wss-echo over TLS),
// -ws-busy-conns (ws-echo-busy) or -ws-large-conns sockets (ws-large) busy
// for -duration, each sending one message and awaiting its echo before
// the next, and counts messages and bytes.

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/zmqbridge/caddy-zmq/internal/wsclient"
	"github.com/zmqbridge/caddy-zmq/internal/wsframe"
)

// WSSpec makes a Case a WebSocket case: its workload and message size.
type WSSpec struct {
	Workload string // "ws-echo", "ws-echo-busy", "wss-echo" or "ws-large"
	Large    bool   // -ws-large-bytes messages on -ws-large-conns sockets
	Busy     bool   // -ws-busy-conns sockets instead of -conns
	TLS      bool   // wss:// through Caddy's HTTPS (internal CA)
}

func wsFlags(o *options) {
	flag.BoolVar(&o.WS, "ws", false, "WebSocket cases instead of hello world: small echo (msgs/s) and large messages (MB/s), zmq vs reverse_proxy (needs bin/wschat-worker, bin/wsecho-http)")
	flag.IntVar(&o.WSSmallBytes, "ws-bytes", 64, "payload of a ws-echo message")
	flag.IntVar(&o.WSLargeBytes, "ws-large-bytes", 1<<20, "payload of a ws-large message")
	flag.IntVar(&o.WSLargeConns, "ws-large-conns", 4, "sockets of a ws-large run (ws-echo uses -conns)")
	flag.IntVar(&o.WSBusyConns, "ws-busy-conns", 128, "sockets of a ws-echo-busy run")
}

func wsCase(name, kind string, spec WSSpec, setup func(context.Context, *Stack, *Env) (string, error)) Case {
	return Case{Name: name, Kind: kind, TLS: spec.TLS, Default: true, Setup: setup, WS: &spec}
}

// wsCases: each workload through zmq and through reverse_proxy. Small
// messages are echoed on -conns sockets, on -ws-busy-conns (more in
// flight: where each side's batching shows), and over TLS.
func wsCases() []Case {
	echo := WSSpec{Workload: "ws-echo"}
	busy := WSSpec{Workload: "ws-echo-busy", Busy: true}
	secure := WSSpec{Workload: "wss-echo", TLS: true}
	large := WSSpec{Workload: "ws-large", Large: true}
	return []Case{
		wsCase("ws-echo/zmq", "zmq", echo, setupWSZmq(false)),
		wsCase("ws-echo/reverse_proxy", "reverse_proxy", echo, setupWSReverseProxy(false)),
		wsCase("ws-echo-busy/zmq", "zmq", busy, setupWSZmq(false)),
		wsCase("ws-echo-busy/reverse_proxy", "reverse_proxy", busy, setupWSReverseProxy(false)),
		wsCase("wss-echo/zmq", "zmq", secure, setupWSZmq(true)),
		wsCase("wss-echo/reverse_proxy", "reverse_proxy", secure, setupWSReverseProxy(true)),
		wsCase("ws-large/zmq", "zmq", large, setupWSZmq(false)),
		wsCase("ws-large/reverse_proxy", "reverse_proxy", large, setupWSReverseProxy(false)),
		// Not in the default set: zmq with the control channel (zmqx/1:
		// reply credit per socket).
		nonDefault(wsCase("ws-echo/zmq+control", "zmq+control", echo, setupWSZmqControl)),
		nonDefault(wsCase("ws-large/zmq+control", "zmq+control", large, setupWSZmqControl)),
		// What the small echo could reach, beside the aim: the least a
		// Go worker does per message (bin/floor-worker's single loop)
		// behind Caddy's zmq, and Mongrel2 (one C event loop, the same
		// libzmq) in front of both workers.
		wsCase("ws-echo/zmq/floor", "zmq+floor", echo, wsSetup(setupZmqFloor(false))),
		wsCase("ws-echo/mongrel2", "mongrel2", echo, setupWSMongrel2),
		wsCase("ws-echo/mongrel2/floor", "mongrel2+floor", echo, wsSetup(setupMongrel2Floor(false))),
	}
}

// wsSetup turns an HTTP case's setup into the same processes' echo URL.
func wsSetup(setup func(context.Context, *Stack, *Env) (string, error)) func(context.Context, *Stack, *Env) (string, error) {
	return func(ctx context.Context, s *Stack, env *Env) (string, error) {
		url, err := setup(ctx, s, env)
		return wsURL(url), err
	}
}

// setupWSMongrel2: a real Mongrel2 in front of bin/wschat-worker.
func setupWSMongrel2(ctx context.Context, s *Stack, env *Env) (string, error) {
	url, frontEnd, err := startMongrel2(ctx, s, env, false)
	if err != nil {
		return "", err
	}
	_, err = s.Start("wschat-worker (mongrel2)", exec.Command(env.WSChat, "-frontend", frontEnd))
	return wsURL(url), err
}

func nonDefault(c Case) Case {
	c.Default = false
	return c
}

// setupWSZmq: Caddy's zmq handler in front of bin/wschat-worker. Returns
// the ws:// (wss://) URL of /echo.
func setupWSZmq(tls bool) func(context.Context, *Stack, *Env) (string, error) {
	return func(ctx context.Context, s *Stack, env *Env) (string, error) {
		return setupWSZmqWith(s, env, tls, false)
	}
}

// setupWSZmqControl: the same with the control channel on both sides.
func setupWSZmqControl(ctx context.Context, s *Stack, env *Env) (string, error) {
	return setupWSZmqWith(s, env, false, true)
}

func setupWSZmqWith(s *Stack, env *Env, tls, control bool) (string, error) {
	p, err := freePorts(3)
	if err != nil {
		return "", err
	}
	req, rep, ctl := tcpEndpoint(p[0]), tcpEndpoint(p[1]), tcpEndpoint(p[2])
	handler, frontEnd := fmt.Sprintf("zmq %s %s", req, rep), req+","+rep
	if control {
		handler += fmt.Sprintf(" {\n\t\tcontrol_endpoint %s\n\t}", ctl)
		frontEnd += "," + ctl
	}
	url, err := startCaddy(s, env, tls, handler)
	if err != nil {
		return "", err
	}
	_, err = s.Start("wschat-worker (zmq)", exec.Command(env.WSChat, "-frontend", frontEnd))
	return wsURL(url), err
}

// setupWSReverseProxy: Caddy's reverse_proxy in front of bin/wsecho-http.
func setupWSReverseProxy(tls bool) func(context.Context, *Stack, *Env) (string, error) {
	return func(ctx context.Context, s *Stack, env *Env) (string, error) {
		p, err := freePorts(1)
		if err != nil {
			return "", err
		}
		addr := fmt.Sprintf("127.0.0.1:%d", p[0])
		if _, err := s.Start("wsecho-http (net/http)", exec.Command(env.WSEchoHTTP, "-listen", addr)); err != nil {
			return "", err
		}
		url, err := startCaddy(s, env, tls, "reverse_proxy "+addr)
		return wsURL(url), err
	}
}

// wsURL turns Caddy's site URL into the echo's ws:// or wss:// URL.
func wsURL(site string) string {
	scheme, rest, _ := strings.Cut(strings.TrimSuffix(site, "/"), "://")
	if scheme == "https" {
		return "wss://" + rest + "/echo"
	}
	return "ws://" + rest + "/echo"
}

// ---------------------------------------------------------------------------
// Load generator

// wsClient is one socket of the load generator: frame is the masked
// message, built once (the same mask every time costs the servers
// nothing less).
type wsClient struct {
	conn  *wsclient.Conn
	frame []byte
	size  int
}

func dialWS(ctx context.Context, target wsTarget, size int) (*wsClient, error) {
	scheme, hostPath, _ := strings.Cut(target.url, "://")
	host, path, _ := strings.Cut(hostPath, "/")
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, err
	}
	if scheme == "wss" {
		// HTTP/1.1 only: an upgrade, as browsers open most WebSockets.
		tc := tls.Client(c, &tls.Config{RootCAs: target.roots, ServerName: strings.Split(host, ":")[0], NextProtos: []string{"http/1.1"}})
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, err
		}
		c = tc
	}
	ws, _, err := wsclient.Handshake(c, host, "/"+path, nil)
	if err != nil {
		c.Close()
		return nil, err
	}
	payload := make([]byte, size)
	_, _ = rand.Read(payload)
	var key [4]byte
	_, _ = rand.Read(key[:])
	return &wsClient{conn: ws, frame: wsframe.AppendMasked(nil, 0x82, payload, key), size: size}, nil
}

// roundTrip sends the message and reads its echo (all its frames).
func (c *wsClient) roundTrip() error {
	if _, err := c.conn.Conn.Write(c.frame); err != nil {
		return err
	}
	got := 0
	for {
		b0, p, err := c.conn.ReadFrame()
		if err != nil {
			return err
		}
		switch b0 & 0x0F {
		case wsframe.OpPing, wsframe.OpPong:
			continue
		case wsframe.OpClose:
			code, _, _ := wsframe.ParseClose(p)
			return fmt.Errorf("server closed the socket with %d", code)
		}
		got += len(p)
		if b0&0x80 != 0 {
			break
		}
	}
	if got != c.size {
		return fmt.Errorf("echo of %d bytes, sent %d", got, c.size)
	}
	return nil
}

func (c *wsClient) close() {
	_ = c.conn.WriteFrame(0x88, []byte{0x03, 0xE8})
	c.conn.Close()
}

// wsLoad is what the load generator counted.
type wsLoad struct {
	Messages int64
	Bytes    int64 // payload bytes echoed (one way)
	Seconds  float64
	Errors   int64
	FirstErr string
}

// runWSLoad opens conns sockets, then round-trips on each for d.
func runWSLoad(ctx context.Context, target wsTarget, conns, size int, d time.Duration) (wsLoad, error) {
	clients := make([]*wsClient, 0, conns)
	defer func() {
		for _, c := range clients {
			c.close()
		}
	}()
	for range conns {
		c, err := dialWS(ctx, target, size)
		if err != nil {
			return wsLoad{}, fmt.Errorf("opening socket %d: %w", len(clients)+1, err)
		}
		clients = append(clients, c)
	}
	var (
		mu  sync.Mutex
		sum wsLoad
		wg  sync.WaitGroup
	)
	start := time.Now()
	deadline := start.Add(d)
	for _, c := range clients {
		_ = c.conn.SetDeadline(deadline.Add(30 * time.Second)) // a stuck echo fails the run
		wg.Add(1)
		go func() {
			defer wg.Done()
			var n int64
			var err error
			for time.Now().Before(deadline) && ctx.Err() == nil {
				if err = c.roundTrip(); err != nil {
					break
				}
				n++
			}
			mu.Lock()
			defer mu.Unlock()
			sum.Messages += n
			sum.Bytes += n * int64(size)
			if err != nil {
				sum.Errors++
				if sum.FirstErr == "" {
					sum.FirstErr = err.Error()
				}
			}
		}()
	}
	wg.Wait()
	sum.Seconds = time.Since(start).Seconds()
	if sum.Errors > 0 {
		return sum, fmt.Errorf("%d of %d sockets failed: %s", sum.Errors, conns, sum.FirstErr)
	}
	return sum, ctx.Err()
}

// wsTarget is where the load goes: a ws:// or wss:// URL, and for wss://
// the roots that verify Caddy's certificate (its internal CA).
type wsTarget struct {
	url   string
	roots *x509.CertPool
}

// caddyRoots reads the root certificate of the internal CA that
// startCaddy's Caddy keeps in its storage.
func caddyRoots(s *Stack) (*x509.CertPool, error) {
	dir, err := s.Dir("caddy")
	if err != nil {
		return nil, err
	}
	pem, err := os.ReadFile(filepath.Join(dir, "storage", "pki", "authorities", "local", "root.crt"))
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, errors.New("no certificate in Caddy's root.crt")
	}
	return roots, nil
}

// waitWSReady polls until one socket echoes one message, or timeout. For
// wss:// it first loads Caddy's root into target.
func waitWSReady(ctx context.Context, s *Stack, target *wsTarget, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		if err := s.Check(); err != nil {
			return err
		}
		var err error
		var c *wsClient
		if strings.HasPrefix(target.url, "wss://") && target.roots == nil {
			target.roots, err = caddyRoots(s)
		}
		if err == nil {
			c, err = dialWS(ctx, *target, 16)
		}
		if err == nil {
			err = c.roundTrip()
			c.close()
			if err == nil {
				return nil
			}
		}
		last = err
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("not ready after %v: %w", timeout, last)
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond): // poll interval, not synchronisation
		}
	}
}

// ---------------------------------------------------------------------------
// Runs

// WSRun is one measurement of one WebSocket case.
type WSRun struct {
	Round    int     `json:"round"`
	Position int     `json:"position"`
	URL      string  `json:"url,omitempty"`
	Conns    int     `json:"conns"`
	MsgBytes int     `json:"message_bytes"`
	Messages int64   `json:"messages"`
	Bytes    int64   `json:"bytes"`
	Seconds  float64 `json:"seconds"`
	// CPUByProcess is each server process's CPU time per message (µs);
	// ClientCPU the load generator's (this program's).
	CPUByProcess map[string]float64 `json:"cpu_us_per_message_by_process,omitempty"`
	// IOByProcess is the part of CPUByProcess spent in libzmq's I/O
	// threads; SwitchesByProcess each process's context switches per
	// message (all its threads).
	IOByProcess       map[string]float64 `json:"zmq_io_us_per_message_by_process,omitempty"`
	SwitchesByProcess map[string]float64 `json:"switches_per_message_by_process,omitempty"`
	ClientCPU         float64            `json:"client_cpu_us_per_message"`
	// OtherPercent is the share of the machine other processes took.
	OtherPercent float64 `json:"other_percent"`
	Error        string  `json:"error,omitempty"`
}

// MsgsPerSec and MBPerSec (1 MB = 10^6 bytes, one way).
func (r WSRun) MsgsPerSec() float64 { return safeDiv(float64(r.Messages), r.Seconds) }
func (r WSRun) MBPerSec() float64   { return safeDiv(float64(r.Bytes)/1e6, r.Seconds) }

func safeDiv(a, b float64) float64 {
	if b <= 0 {
		return 0
	}
	return a / b
}

func runWSCase(ctx context.Context, c Case, env *Env, o options) WSRun {
	run := WSRun{Conns: o.Conns, MsgBytes: o.WSSmallBytes}
	switch {
	case c.WS.Large:
		run.Conns, run.MsgBytes = o.WSLargeConns, o.WSLargeBytes
	case c.WS.Busy:
		run.Conns = o.WSBusyConns
	}
	var s *Stack
	var target wsTarget
	for attempt := 1; ; attempt++ {
		var err error
		if s, err = newStack(env.WorkerEnv); err != nil {
			run.Error = err.Error()
			return run
		}
		run.URL, err = c.Setup(ctx, s, env)
		target = wsTarget{url: run.URL}
		if err == nil {
			err = waitWSReady(ctx, s, &target, o.Timeout)
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
	if o.Warmup > 0 {
		if _, err := runWSLoad(ctx, target, run.Conns, run.MsgBytes, o.Warmup); err != nil {
			run.Error = "warm-up: " + err.Error()
			return run
		}
	}
	meter := startCPUMeter(s)
	self := selfCPU()
	load, err := runWSLoad(ctx, target, run.Conns, run.MsgBytes, o.Duration)
	clientCPU := selfCPU() - self
	// The client runs in this program, which ownTicks counts as ours: no
	// separate load-generator time to subtract.
	sh := meter.shares(s, 0, load.Messages)
	run.Messages, run.Bytes, run.Seconds = load.Messages, load.Bytes, load.Seconds
	run.CPUByProcess, run.OtherPercent = sh.ByProcess, sh.Other
	run.IOByProcess, run.SwitchesByProcess = sh.ZmqIOByProcess, sh.SwitchesByProcess
	run.ClientCPU = safeDiv(clientCPU*1e6, float64(load.Messages))
	if err == nil {
		err = s.Check()
	}
	if o.Verbose {
		fmt.Print(s.Logs())
	}
	if err != nil {
		run.Error = err.Error()
	}
	return run
}

// ---------------------------------------------------------------------------
// Report

// WSCaseReport: medians over a case's successful runs.
type WSCaseReport struct {
	Name     string  `json:"name"`
	Kind     string  `json:"kind"`
	Workload string  `json:"workload"`
	OK       int     `json:"ok_runs"`
	Failed   int     `json:"failed_runs"`
	MsgsPerS float64 `json:"msgs_per_s"`
	MBPerS   float64 `json:"mb_per_s"`
	// ServerCPU is the servers' CPU per message (µs), all processes.
	ServerCPU    float64            `json:"server_cpu_us_per_message"`
	CPUByProcess map[string]float64 `json:"cpu_us_per_message_by_process,omitempty"`
	// IOByProcess and SwitchesByProcess: medians of the runs' (WSRun).
	IOByProcess       map[string]float64 `json:"zmq_io_us_per_message_by_process,omitempty"`
	SwitchesByProcess map[string]float64 `json:"switches_per_message_by_process,omitempty"`
	ClientCPU         float64            `json:"client_cpu_us_per_message"`
	// OverReverseProxy is MsgsPerS over reverse_proxy's on the same
	// workload (0: no reverse_proxy case ran).
	OverReverseProxy float64 `json:"over_reverse_proxy,omitempty"`
	Runs             []WSRun `json:"runs"`
}

// WSRatio compares zmq with reverse_proxy on one workload.
type WSRatio struct {
	Workload string  `json:"workload"`
	Ratio    float64 `json:"zmq_over_reverse_proxy"` // of msgs/s (= of MB/s: same message size)
	CPURatio float64 `json:"server_cpu_ratio"`       // zmq's server CPU per message over reverse_proxy's
	Pass     bool    `json:"aim_met"`                // Ratio >= 1
}

// WSReport is the -ws output (bin/bench-ws.json).
type WSReport struct {
	Started time.Time      `json:"started"`
	Command string         `json:"command"`
	Machine Machine        `json:"machine"`
	Rounds  int            `json:"rounds"`
	Cases   []WSCaseReport `json:"cases"`
	Ratios  []WSRatio      `json:"ratios"`
	Failed  bool           `json:"failed"`
}

func (rep *WSReport) finish(cases []Case, results [][]WSRun) {
	rep.Cases = rep.Cases[:0]
	for i, c := range cases {
		cr := WSCaseReport{Name: c.Name, Kind: c.Kind, Workload: c.WS.Workload, Runs: results[i]}
		var msgs, mbs, server, client []float64
		var cpu, io, switches []map[string]float64
		for _, r := range results[i] {
			if r.Error != "" || r.Messages == 0 {
				cr.Failed++
				rep.Failed = true
				continue
			}
			cr.OK++
			msgs, mbs = append(msgs, r.MsgsPerSec()), append(mbs, r.MBPerSec())
			total := 0.0
			for _, v := range r.CPUByProcess {
				total += v
			}
			server, client = append(server, total), append(client, r.ClientCPU)
			cpu, io, switches = append(cpu, r.CPUByProcess), append(io, r.IOByProcess), append(switches, r.SwitchesByProcess)
		}
		cr.MsgsPerS, cr.MBPerS = median(msgs), median(mbs)
		cr.ServerCPU, cr.ClientCPU = median(server), median(client)
		cr.CPUByProcess, cr.IOByProcess, cr.SwitchesByProcess = medianOfMaps(cpu), medianOfMaps(io), medianOfMaps(switches)
		rep.Cases = append(rep.Cases, cr)
	}
	rep.Ratios = rep.Ratios[:0]
	var workloads []string
	for _, c := range cases {
		if !slices.Contains(workloads, c.WS.Workload) {
			workloads = append(workloads, c.WS.Workload)
		}
	}
	for _, w := range workloads {
		z, rp := rep.find(w, "zmq"), rep.find(w, "reverse_proxy")
		if z == nil || rp == nil || z.OK == 0 || rp.OK == 0 {
			continue
		}
		for i := range rep.Cases {
			if c := &rep.Cases[i]; c.Workload == w && c.OK > 0 {
				c.OverReverseProxy = safeDiv(c.MsgsPerS, rp.MsgsPerS)
			}
		}
		r := WSRatio{Workload: w, Ratio: safeDiv(z.MsgsPerS, rp.MsgsPerS), CPURatio: safeDiv(z.ServerCPU, rp.ServerCPU)}
		r.Pass = r.Ratio >= 1
		rep.Ratios = append(rep.Ratios, r)
	}
}

func (rep *WSReport) find(workload, kind string) *WSCaseReport {
	for i := range rep.Cases {
		if rep.Cases[i].Workload == workload && rep.Cases[i].Kind == kind {
			return &rep.Cases[i]
		}
	}
	return nil
}

func (rep *WSReport) print(w io.Writer) {
	rows := [][]string{{"case", "runs", "msgs/s", "MB/s", "server CPU µs/msg", "by process", "client µs/msg"}}
	for _, c := range rep.Cases {
		var procs []string
		for p, v := range c.CPUByProcess {
			proc := fmt.Sprintf("%s %.1f", p, v)
			if io, ok := c.IOByProcess[p]; ok {
				proc += fmt.Sprintf(" (io %.1f)", io)
			}
			if sw, ok := c.SwitchesByProcess[p]; ok {
				proc += fmt.Sprintf(" %.2f sw", sw)
			}
			procs = append(procs, proc)
		}
		slices.Sort(procs)
		rows = append(rows, []string{c.Name, fmt.Sprintf("%d/%d", c.OK, c.OK+c.Failed),
			fmt.Sprintf("%.0f", c.MsgsPerS), fmt.Sprintf("%.1f", c.MBPerS),
			fmt.Sprintf("%.1f", c.ServerCPU), strings.Join(procs, ", "), fmt.Sprintf("%.1f", c.ClientCPU)})
	}
	printColumns(w, rows, 1)
	fmt.Fprintln(w)
	for _, r := range rep.Ratios {
		fmt.Fprintf(w, "%-12s zmq/reverse_proxy throughput %.2f (aim >= 1: %s), server CPU per message %.2f\n",
			r.Workload, r.Ratio, passMiss(r.Pass), r.CPURatio)
	}
	for _, c := range rep.Cases {
		if c.Kind != "zmq" && c.Kind != "reverse_proxy" && c.OverReverseProxy > 0 {
			fmt.Fprintf(w, "%-24s throughput %.2f of reverse_proxy's (for comparison, no aim)\n", c.Name, c.OverReverseProxy)
		}
	}
}

func runWS(ctx context.Context, o options, cases []Case, env *Env, root string) int {
	rep := &WSReport{Started: time.Now(), Command: commandLine(), Rounds: o.Rounds}
	rep.Machine = machineInfo(root, env, o.Wrk)
	m := rep.Machine
	fmt.Printf("command:  %s\n", rep.Command)
	fmt.Printf("machine:  %d CPUs, %s, kernel %s\n", m.CPUs, m.CPUModel, m.Kernel)
	fmt.Printf("software: %s; caddy %s\n", m.GoVersion, m.Caddy)
	fmt.Printf("commit:   %s\n", m.Commit)
	fmt.Printf("load:     ws-echo %d sockets x %d-byte messages, ws-large %d sockets x %s messages; %v per run after a %v warm-up; %d interleaved round(s), fresh processes per run\n",
		o.Conns, o.WSSmallBytes, o.WSLargeConns, fmtBytes(int64(o.WSLargeBytes)), o.Duration, o.Warmup, o.Rounds)
	fmt.Printf("upstream: zmq -> %s /echo; reverse_proxy -> %s\n\n", env.WSChat, env.WSEchoHTTP)

	results := make([][]WSRun, len(cases))
	interrupted := false
rounds:
	for r := 0; r < o.Rounds; r++ {
		for i := range cases {
			ci := (i + r) % len(cases)
			c := cases[ci]
			run := runWSCase(ctx, c, env, o)
			if ctx.Err() != nil {
				interrupted = true
				break rounds
			}
			run.Round, run.Position = r+1, i+1
			results[ci] = append(results[ci], run)
			if run.Error != "" {
				fmt.Printf("round %d/%d  %-24s FAILED: %s\n", r+1, o.Rounds, c.Name, firstLine(run.Error))
			} else {
				fmt.Printf("round %d/%d  %-24s %8.0f msgs/s %8.1f MB/s  (other processes: %s of the CPU)\n",
					r+1, o.Rounds, c.Name, run.MsgsPerSec(), run.MBPerSec(), fmtPercent(run.OtherPercent))
			}
		}
	}
	rep.finish(cases, results)
	return conclude(rep, rep.print, rep.Failed, interrupted, o.Out)
}
