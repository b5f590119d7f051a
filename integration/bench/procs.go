package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is one child process. Its combined output is kept (the last 64 KiB)
// for error messages.
type Proc struct {
	Name string
	// LogFile, if set, is a log the process writes itself (Mongrel2's
	// error.log); its end is shown with the process's output.
	LogFile string
	cmd     *exec.Cmd
	out     *tailBuffer
	done    chan struct{}
	err     error // set before done is closed
}

// startProc starts cmd in its own process group (a Ctrl-C in the terminal
// reaches only the bench, which then stops its children in order) and asks
// the kernel to kill it if the bench dies without cleaning up.
func startProc(name string, cmd *exec.Cmd) (*Proc, error) {
	out := &tailBuffer{max: 64 << 10}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, cmd: cmd, out: out, done: make(chan struct{})}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Exited returns nil while the process runs, otherwise an error saying how
// it ended, with the end of its output.
func (p *Proc) Exited() error {
	select {
	case <-p.done:
		return fmt.Errorf("%s exited (%v); output:\n%s", p.Name, p.err, indent(p.Output()))
	default:
		return nil
	}
}

// Stop sends SIGTERM, and SIGKILL if the process is still there after 5 s.
func (p *Proc) Stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// Output is the end of the process's combined stdout and stderr, and of its
// LogFile.
func (p *Proc) Output() string {
	out := p.out.String()
	if p.LogFile != "" {
		if b, err := os.ReadFile(p.LogFile); err == nil {
			out += fmt.Sprintf("[%s]\n%s", p.LogFile, truncateStart(string(b), 16<<10))
		}
	}
	return out
}

// Stack is the set of processes and temporary files behind one measurement.
// Close undoes everything, newest first.
type Stack struct {
	dir   string
	procs []*Proc
	// workerEnv is added to the environment of every process but the
	// front ends (-worker-env).
	workerEnv []string
}

func newStack(workerEnv []string) (*Stack, error) {
	dir, err := os.MkdirTemp("", "zmqbench-*")
	if err != nil {
		return nil, err
	}
	return &Stack{dir: dir, workerEnv: workerEnv}, nil
}

// Dir makes (and returns) a directory inside the stack's temporary directory.
func (s *Stack) Dir(name string) (string, error) {
	d := s.dir + "/" + name
	return d, os.MkdirAll(d, 0o755)
}

// Start starts a process that Close will stop.
func (s *Stack) Start(name string, cmd *exec.Cmd) (*Proc, error) {
	if len(s.workerEnv) > 0 && !frontEndProcs[name] {
		if cmd.Env == nil {
			cmd.Env = os.Environ()
		}
		cmd.Env = append(cmd.Env, s.workerEnv...)
	}
	p, err := startProc(name, cmd)
	if err != nil {
		return nil, err
	}
	s.procs = append(s.procs, p)
	return p, nil
}

// Check returns the first process that is no longer running, as an error.
func (s *Stack) Check() error {
	for _, p := range s.procs {
		if err := p.Exited(); err != nil {
			return err
		}
	}
	return nil
}

// Logs is the output of every process so far, for -v and error reports.
func (s *Stack) Logs() string {
	var b strings.Builder
	for _, p := range s.procs {
		fmt.Fprintf(&b, "----- %s -----\n%s\n", p.Name, p.Output())
	}
	return b.String()
}

// Close stops the processes in reverse order of start and removes the
// temporary directory.
func (s *Stack) Close() {
	for i := len(s.procs) - 1; i >= 0; i-- {
		s.procs[i].Stop()
	}
	s.procs = nil
	_ = os.RemoveAll(s.dir)
}

// freePorts returns n distinct TCP ports that were free on 127.0.0.1 a moment
// ago. All n listeners are held at once so the ports differ.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// probeResult describes the response that told us a target was ready.
type probeResult struct {
	Status    int    `json:"status"`
	BodyBytes int    `json:"body_bytes"`
	Proto     string `json:"proto"`
	TLS       string `json:"tls,omitempty"` // version and cipher suite the Go client got
	// Header is the response header (without Date), to check that the
	// cases answer alike.
	Header http.Header `json:"header"`
}

// waitReady polls url until it answers 200 with exactly the body want, a
// process of the stack exits, ctx ends or timeout passes. Polling is the only
// synchronisation: no fixed sleeps.
func waitReady(ctx context.Context, s *Stack, url, want string, timeout time.Duration) (probeResult, error) {
	client := &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, // like wrk
			DisableKeepAlives: true,
		},
	}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(timeout)
	var last error
	for {
		if err := s.Check(); err != nil {
			return probeResult{}, err
		}
		res, err := probe(ctx, client, url, want)
		if err == nil {
			return res, nil
		}
		last = err
		if time.Now().After(deadline) {
			return probeResult{}, fmt.Errorf("%s not ready after %v: %v\n%s", url, timeout, last, s.Logs())
		}
		select {
		case <-ctx.Done():
			return probeResult{}, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func probe(ctx context.Context, client *http.Client, url, want string) (probeResult, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return probeResult{}, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return probeResult{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return probeResult{}, err
	}
	if resp.StatusCode != 200 || string(body) != want {
		return probeResult{}, fmt.Errorf("got %s %q", resp.Status, truncate(string(body), 200))
	}
	r := probeResult{Status: resp.StatusCode, BodyBytes: len(body), Proto: resp.Proto, Header: resp.Header.Clone()}
	r.Header.Del("Date")
	if cs := resp.TLS; cs != nil {
		r.TLS = tls.VersionName(cs.Version) + " " + tls.CipherSuiteName(cs.CipherSuite)
	}
	return r, nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - b.max; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return "    (no output)"
	}
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}

func truncateStart(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// errAddrInUse tells setups worth retrying on other ports apart from real
// failures.
func errAddrInUse(err error) bool {
	return err != nil && (errors.Is(err, syscall.EADDRINUSE) ||
		strings.Contains(strings.ToLower(err.Error()), "address already in use"))
}
