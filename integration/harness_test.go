package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Deadlines. Generous: these tests must hold on a loaded 2-core machine. They
// bound polling loops; nothing waits for a fixed time to synchronise.
const (
	startTimeout   = 60 * time.Second // a process becoming ready
	requestTimeout = 30 * time.Second // one ordinary request
	lineTimeout    = 20 * time.Second // a line showing up in a process's output
	stopTimeout    = 15 * time.Second // SIGTERM to exit, before SIGKILL
	pollInterval   = 25 * time.Millisecond
)

// ---------------------------------------------------------------------------
// Locating the repository and the binaries.

var repoRoot = func() string {
	wd, err := os.Getwd()
	if err != nil {
		panic(err)
	}
	dir := wd
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return filepath.Dir(wd)
		}
		dir = parent
	}
}()

func repoPath(parts ...string) string {
	return filepath.Join(append([]string{repoRoot}, parts...)...)
}

// integrationRequired reports whether missing prerequisites are failures
// (make test sets ZMQ_INTEGRATION=1) rather than reasons to skip.
func integrationRequired() bool { return os.Getenv("ZMQ_INTEGRATION") == "1" }

// needFile skips (or, under make test, fails) when path does not exist.
func needFile(t testing.TB, path, hint string) string {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		if integrationRequired() {
			t.Fatalf("%s is missing: %s", path, hint)
		}
		t.Skipf("%s is missing (%s; set ZMQ_INTEGRATION=1 to make this a failure)", path, hint)
	}
	return path
}

func caddyBin(t testing.TB) string {
	return needFile(t, repoPath("bin", "caddy"), "run make build")
}

func testworkerBin(t testing.TB) string {
	return needFile(t, repoPath("bin", "testworker"), "run make build")
}

// ---------------------------------------------------------------------------
// Free ports.

// freePorts returns n distinct loopback TCP ports that were free a moment
// ago. They come from below the kernel's ephemeral range
// (ip_local_port_range) when it leaves room there: ports handed out for
// port-0 binds and outgoing connections come from that range, so another
// test running meanwhile (go test runs packages in parallel) cannot take
// one before the caller binds it, as it did when these were port-0 picks
// (a worker's bind failed with "address already in use"). Each port is
// handed out once per test binary. Callers that can still retry on
// "address already in use" do.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, 0, n)
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for len(ports) < n {
		ln, err := listenFreePort()
		if err != nil {
			t.Fatalf("free port: %v", err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// pickedPorts are the ports freePorts handed out below the ephemeral range.
var pickedPorts = struct {
	sync.Mutex
	m map[int]bool
}{m: map[int]bool{}}

// Ports freePorts picks from: [lowPort, the ephemeral range's start).
const lowPort = 10000

// listenFreePort listens on a port below the ephemeral range not handed out
// before, or, if that fails, on a port the kernel picks.
func listenFreePort() (net.Listener, error) {
	if high := ephemeralStart() - 1; high-lowPort >= 1000 {
		pickedPorts.Lock()
		defer pickedPorts.Unlock()
		for range 200 {
			port := lowPort + rand.IntN(high-lowPort+1)
			if pickedPorts.m[port] {
				continue
			}
			if ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
				pickedPorts.m[port] = true
				return ln, nil
			}
		}
	}
	return net.Listen("tcp", "127.0.0.1:0")
}

// ephemeralStart is the first port of the kernel's ephemeral range (0 if
// unknown), read once.
var ephemeralStart = sync.OnceValue(func() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0
	}
	start, _ := strconv.Atoi(f[0])
	return start
})

func tcpEndpoint(port int) string { return fmt.Sprintf("tcp://127.0.0.1:%d", port) }

// ---------------------------------------------------------------------------
// Output capture.

// outputBuffer collects a process's stdout and stderr and lets tests wait for
// a line to appear.
type outputBuffer struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	notify chan struct{} // closed and replaced on every write
}

func newOutputBuffer() *outputBuffer { return &outputBuffer{notify: make(chan struct{})} }

func (b *outputBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	close(b.notify)
	b.notify = make(chan struct{})
	return len(p), nil
}

func (b *outputBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// snapshot returns the output so far and a channel closed at the next write.
func (b *outputBuffer) snapshot() (string, <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String(), b.notify
}

// ---------------------------------------------------------------------------
// Processes.

// process is a child process in its own process group, stopped (the whole
// group) at the end of the test, with its output logged if the test failed.
type process struct {
	t    testing.TB
	name string
	cmd  *exec.Cmd
	out  *outputBuffer
	done chan struct{} // closed when the process has exited
	err  error         // Wait's result, valid after done
	stop sync.Once
}

// startProcess starts cmd (Dir, Env already set) and registers its cleanup.
func startProcess(t testing.TB, name string, cmd *exec.Cmd) *process {
	t.Helper()
	p := &process{t: t, name: name, cmd: cmd, out: newOutputBuffer(), done: make(chan struct{})}
	cmd.Stdout = p.out
	cmd.Stderr = p.out
	cmd.Stdin = nil
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s (%s): %v", name, strings.Join(cmd.Args, " "), err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() || testing.Verbose() && os.Getenv("ZMQ_TEST_LOGS") == "1" {
			t.Logf("----- %s (%s) output -----\n%s", name, strings.Join(cmd.Args, " "), tail(p.out.String(), 64<<10))
		}
	})
	return p
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "[...]\n" + s[len(s)-n:]
}

// Exited reports whether the process has exited.
func (p *process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM to the process group, then SIGKILL after stopTimeout.
// It returns Wait's error.
func (p *process) Stop() error {
	p.stop.Do(func() {
		if p.Exited() {
			return
		}
		pgid := p.cmd.Process.Pid
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(stopTimeout):
			p.t.Logf("%s did not exit %v after SIGTERM: SIGKILL", p.name, stopTimeout)
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-p.done
		}
		// Anything it left behind in its group.
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	})
	<-p.done
	return p.err
}

// WaitFor waits until the output contains s, the process exits, or timeout.
func (p *process) WaitFor(s string, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		out, changed := p.out.snapshot()
		if strings.Contains(out, s) {
			return nil
		}
		select {
		case <-changed:
		case <-p.done:
			if strings.Contains(p.out.String(), s) {
				return nil
			}
			return fmt.Errorf("%s exited (%v) before printing %q", p.name, p.err, s)
		case <-deadline.C:
			return fmt.Errorf("%s did not print %q within %v", p.name, s, timeout)
		}
	}
}

// MustWaitFor is WaitFor that fails the test.
func (p *process) MustWaitFor(s string, timeout time.Duration) {
	p.t.Helper()
	if err := p.WaitFor(s, timeout); err != nil {
		p.t.Fatal(err)
	}
}

// ---------------------------------------------------------------------------
// Polling.

// poll calls f every pollInterval until it returns nil or timeout passes; it
// returns f's last error on timeout. abort, if not nil, stops polling early
// with an error (e.g. the process under test exited).
func poll(timeout time.Duration, abort func() error, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if abort != nil {
			if aerr := abort(); aerr != nil {
				return fmt.Errorf("%w (last error: %v)", aerr, err)
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v: %w", timeout, err)
		}
		time.Sleep(pollInterval)
	}
}

// anyExited is a poll abort: it fails once one of procs has exited.
func anyExited(procs []*process) func() error {
	return func() error {
		for _, p := range procs {
			if p.Exited() {
				return fmt.Errorf("%s exited: %v", p.name, p.err)
			}
		}
		return nil
	}
}

// ---------------------------------------------------------------------------
// Caddy.

// caddyOpts configures startCaddy.
type caddyOpts struct {
	// Config is the Caddyfile (absolute, or relative to the repository root).
	Config string
	// Env adds environment variables (the Caddyfiles read their settings
	// from {$VAR} placeholders).
	Env map[string]string
	// Endpoints names extra variables to set to fresh tcp://127.0.0.1:PORT
	// endpoints, besides ZMQ_REQUESTS and ZMQ_REPLIES which are always set.
	Endpoints []string
	// HTTPS means the config serves https://localhost:HTTPS_PORT/ with the
	// internal CA: startCaddy fetches the root and waits for the site.
	HTTPS bool
}

// caddy is one running bin/caddy.
type caddy struct {
	t         testing.TB
	proc      *process
	opts      caddyOpts
	config    string
	env       []string          // full environment, also used for reload
	vars      map[string]string // the variables we set
	Admin     string            // host:port of the admin API
	HTTPPort  int
	HTTPSPort int
	roots     *x509.CertPool // Caddy's local CA, when HTTPS
}

// startCaddy runs bin/caddy run with opts.Config on free ports, with its own
// data/config directories, and waits until its admin API and site answer.
func startCaddy(t testing.TB, opts caddyOpts) *caddy {
	t.Helper()
	bin := caddyBin(t)
	config := opts.Config
	if !filepath.IsAbs(config) {
		config = repoPath(config)
	}
	var lastErr error
	for attempt := 1; attempt <= 4; attempt++ {
		c, err := tryStartCaddy(t, bin, config, opts)
		if err == nil {
			return c
		}
		lastErr = err
		if !errors.Is(err, errPortTaken) {
			break
		}
		t.Logf("caddy attempt %d: %v; retrying with other ports", attempt, err)
	}
	t.Fatalf("starting caddy with %s: %v", opts.Config, lastErr)
	return nil
}

var errPortTaken = errors.New("a port was taken")

func tryStartCaddy(t testing.TB, bin, config string, opts caddyOpts) (*caddy, error) {
	ports := freePorts(t, 6+len(opts.Endpoints))
	dir := t.TempDir()
	vars := map[string]string{
		"XDG_DATA_HOME":   filepath.Join(dir, "data"),
		"XDG_CONFIG_HOME": filepath.Join(dir, "config"),
		"ADMIN_ADDR":      fmt.Sprintf("127.0.0.1:%d", ports[0]),
		"HTTP_PORT":       strconv.Itoa(ports[1]),
		"HTTPS_PORT":      strconv.Itoa(ports[2]),
		"ZMQ_REQUESTS":    tcpEndpoint(ports[3]),
		"ZMQ_REPLIES":     tcpEndpoint(ports[4]),
		"ZMQ_CONTROL":     tcpEndpoint(ports[5]),
		"BIND_HOST":       "127.0.0.1",
	}
	for i, name := range opts.Endpoints {
		vars[name] = tcpEndpoint(ports[6+i])
	}
	for k, v := range opts.Env {
		vars[k] = v
	}
	env := os.Environ()
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	c := &caddy{
		t: t, opts: opts, config: config, env: env, vars: vars,
		Admin: vars["ADMIN_ADDR"], HTTPPort: ports[1], HTTPSPort: ports[2],
	}
	cmd := exec.Command(bin, "run", "--config", config, "--adapter", "caddyfile")
	cmd.Dir = dir
	cmd.Env = env
	c.proc = startProcess(t, "caddy", cmd)

	abort := func() error {
		if c.proc.Exited() {
			out := strings.ToLower(c.proc.out.String())
			if strings.Contains(out, "address already in use") {
				return errPortTaken
			}
			return fmt.Errorf("caddy exited: %v", c.proc.err)
		}
		return nil
	}
	admin := &http.Client{Timeout: 5 * time.Second}
	// 1. The admin API answers.
	err := poll(startTimeout, abort, func() error {
		resp, err := admin.Get("http://" + c.Admin + "/config/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /config/: %s", resp.Status)
		}
		return nil
	})
	if err != nil {
		c.proc.Stop()
		return nil, err
	}
	// 2. The site answers (any HTTP status: there may be no worker yet).
	if opts.HTTPS {
		err = poll(startTimeout, abort, func() error {
			roots, err := c.fetchRoot()
			if err != nil {
				return err
			}
			c.roots = roots
			return nil
		})
		if err == nil {
			// The first TLS handshakes can fail while the internal issuer
			// is still issuing the site's certificate.
			client := c.Client(modeH2)
			err = poll(startTimeout, abort, func() error {
				return c.probe(client, c.HTTPSURL("/"))
			})
			client.CloseIdleConnections()
		}
	} else {
		client := c.Client(modeHTTP)
		err = poll(startTimeout, abort, func() error {
			return c.probe(client, c.HTTPURL("/"))
		})
		client.CloseIdleConnections()
	}
	if err != nil {
		c.proc.Stop()
		return nil, err
	}
	return c, nil
}

// probe makes one short request and discards the answer.
func (c *caddy) probe(client *http.Client, url string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"?probe=1", nil)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return nil
}

// fetchRoot reads the local CA's root certificate from the admin API.
func (c *caddy) fetchRoot() (*x509.CertPool, error) {
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + c.Admin + "/pki/ca/local")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("GET /pki/ca/local: %s: %s", resp.Status, b)
	}
	var ca struct {
		RootCertificate string `json:"root_certificate"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&ca); err != nil {
		return nil, fmt.Errorf("GET /pki/ca/local: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(ca.RootCertificate)) {
		return nil, fmt.Errorf("GET /pki/ca/local: no certificate in root_certificate %q", ca.RootCertificate)
	}
	return pool, nil
}

// Endpoint returns the value of an endpoint variable (ZMQ_REQUESTS, ...).
func (c *caddy) Endpoint(name string) string { return c.vars[name] }

// FrontEnd is the -frontend flag value for workers of this Caddy.
func (c *caddy) FrontEnd() string { return c.vars["ZMQ_REQUESTS"] + "," + c.vars["ZMQ_REPLIES"] }

// FrontEndControl is FrontEnd with the control endpoint, for configs that
// set control_endpoint {$ZMQ_CONTROL}.
func (c *caddy) FrontEndControl() string { return c.FrontEnd() + "," + c.vars["ZMQ_CONTROL"] }

func (c *caddy) HTTPURL(path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", c.HTTPPort, path)
}

func (c *caddy) HTTPSURL(path string) string {
	return fmt.Sprintf("https://localhost:%d%s", c.HTTPSPort, path)
}

// URL returns the site URL for a client mode.
func (c *caddy) URL(m clientMode, path string) string {
	if m.TLS {
		return c.HTTPSURL(path)
	}
	return c.HTTPURL(path)
}

// Client returns a new client for a mode; HTTPS clients verify the chain
// against Caddy's local CA.
func (c *caddy) Client(m clientMode) *http.Client {
	if m.TLS && c.roots == nil {
		c.t.Fatalf("client %s: this caddy was not started with HTTPS", m.Name)
	}
	return newClient(m, c.roots)
}

// Reload runs `bin/caddy reload` with the same environment plus env.
func (c *caddy) Reload(env map[string]string) error {
	e := append([]string(nil), c.env...)
	for k, v := range env {
		e = append(e, k+"="+v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, caddyBin(c.t), "reload", "--config", c.config, "--adapter", "caddyfile",
		"--address", c.Admin, "--force")
	cmd.Env = e
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("caddy reload: %v\n%s", err, out)
	}
	return nil
}

// ---------------------------------------------------------------------------
// Clients.

type clientMode struct {
	Name string
	TLS  bool
	H2   bool
}

var (
	modeHTTP  = clientMode{Name: "http1"}
	modeHTTPS = clientMode{Name: "https1", TLS: true}
	modeH2    = clientMode{Name: "h2", TLS: true, H2: true}
)

// WantProto is the VERSION a worker sees for requests in this mode.
func (m clientMode) WantProto() string {
	if m.H2 {
		return "HTTP/2.0"
	}
	return "HTTP/1.1"
}

// loopbackDialer sends every connection to 127.0.0.1, whatever the host name
// in the URL (localhost must not resolve to anything else; TLS still checks
// the certificate for the URL's host).
func loopbackDial(ctx context.Context, network, addr string) (net.Conn, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	d := net.Dialer{Timeout: 10 * time.Second}
	return d.DialContext(ctx, "tcp4", net.JoinHostPort("127.0.0.1", port))
}

func newClient(m clientMode, roots *x509.CertPool) *http.Client {
	tr := &http.Transport{
		DialContext:           loopbackDial,
		MaxIdleConnsPerHost:   32,
		IdleConnTimeout:       30 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: requestTimeout,
		Protocols:             new(http.Protocols),
	}
	switch {
	case m.TLS && m.H2:
		tr.Protocols.SetHTTP2(true)
	default:
		tr.Protocols.SetHTTP1(true)
	}
	if m.TLS {
		tr.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{
		Transport: tr,
		Timeout:   2 * requestTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// ---------------------------------------------------------------------------
// Workers.

// command returns cmd for bin with args, run in a temporary directory.
func command(t testing.TB, bin string, args ...string) *exec.Cmd {
	cmd := exec.Command(bin, args...)
	cmd.Dir = t.TempDir()
	return cmd
}

// startTestworker runs bin/testworker for the given front ends.
func startTestworker(t testing.TB, name string, frontEnds ...string) *process {
	t.Helper()
	args := []string{"-name", name}
	for _, fe := range frontEnds {
		args = append(args, "-frontend", fe)
	}
	cmd := exec.Command(testworkerBin(t), args...)
	cmd.Dir = t.TempDir()
	return startProcess(t, name, cmd)
}

// startPythonHandler runs testdata/m2handler.py (PULL connect to requests,
// PUB connect to replies) and waits for it to print READY.
func startPythonHandler(t testing.TB, requests, replies string) *process {
	t.Helper()
	py := needFile(t, "/usr/bin/python3", "run make deps (python3-zmq)")
	if err := exec.Command(py, "-c", "import zmq").Run(); err != nil {
		if integrationRequired() {
			t.Fatalf("python3-zmq is missing (run make deps): %v", err)
		}
		t.Skipf("python3-zmq is missing: %v", err)
	}
	cmd := exec.Command(py, "-u", repoPath("integration", "testdata", "m2handler.py"),
		"--requests", requests, "--replies", replies)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
	p := startProcess(t, "m2handler.py", cmd)
	p.MustWaitFor("READY", startTimeout)
	return p
}

// waitWorker polls url until a worker named name answers it with 200.
// Requests made while no worker is connected get 503 (or time out on a front
// end that queues them), so each try is short.
func waitWorker(t testing.TB, client *http.Client, url, name string, procs ...*process) {
	t.Helper()
	err := pollGET(client, url, procs, func(resp *http.Response, _ []byte) error {
		if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Worker") != name {
			return fmt.Errorf("GET %s: %s from %q", url, resp.Status, resp.Header.Get("X-Worker"))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("worker %s not reachable through %s: %v", name, url, err)
	}
}

// pollGET GETs url (3 s per try) until check accepts the response and its
// body, for startTimeout; it gives up early if one of procs exits.
func pollGET(client *http.Client, url string, procs []*process, check func(*http.Response, []byte) error) error {
	return poll(startTimeout, anyExited(procs), func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		return check(resp, b)
	})
}

// ---------------------------------------------------------------------------
// Requests.

// echoReply is the JSON echo of testworker and m2handler.py.
type echoReply struct {
	Worker     string              `json:"worker"`
	Method     string              `json:"method"`
	Path       string              `json:"path"`
	Query      string              `json:"query"`
	Headers    map[string][]string `json:"headers"`
	Body       string              `json:"body"`
	BodyLen    int                 `json:"body_len"`
	BodySHA256 string              `json:"body_sha256"`
	RemoteAddr string              `json:"remote_addr"`
	TLS        bool                `json:"tls"`
	Proto      string              `json:"proto"`
	Host       string              `json:"host"`
	Pattern    string              `json:"pattern"`
}

// Header returns all values of a (lower-case) request header the worker saw,
// joined with ", ".
func (e *echoReply) Header(name string) string {
	return strings.Join(e.Headers[strings.ToLower(name)], ", ")
}

type response struct {
	*http.Response
	Body []byte
}

// do performs a request and reads the whole body.
func do(client *http.Client, method, url string, body io.Reader, hdr http.Header) (*response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*requestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: reading body: %w", method, url, err)
	}
	return &response{Response: resp, Body: b}, nil
}

func mustDo(t testing.TB, client *http.Client, method, url string, body io.Reader, hdr http.Header) *response {
	t.Helper()
	r, err := do(client, method, url, body, hdr)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return r
}

var jsonUnmarshal = json.Unmarshal

func decodeEcho(t testing.TB, r *response) *echoReply {
	t.Helper()
	var e echoReply
	if err := json.Unmarshal(r.Body, &e); err != nil {
		t.Fatalf("%s %s: %s: not an echo: %v\n%q", r.Request.Method, r.Request.URL, r.Status, err, tail(string(r.Body), 2000))
	}
	return &e
}
