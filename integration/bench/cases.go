package main

import (
	"time"

	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// helloBody is what bin/hello-worker answers (with Content-Type text/plain;
// charset=utf-8, which is also what `respond` sets), and `respond` is made to
// answer the same bytes. Readiness probes require exactly this body.
const helloBody = "Hello, world!\n"

// Env is what the setups need from the machine.
type Env struct {
	Caddy string // bin/caddy
	Hello string // bin/hello-worker
	Floor string // bin/floor-worker (the single-loop floor)
	// FrontFloor is bin/frontfloor (the least Go front end, see goals.go),
	// run with -spin FrontFloorSpin when that is set.
	FrontFloor     string
	FrontFloorSpin time.Duration
	Echo           string // bin/echo-worker (-large)
	// -ws: bin/wschat-worker (its /echo) and bin/wsecho-http.
	WSChat     string
	WSEchoHTTP string
	M2sh       string
	Mongrel2   string
	// WorkerEnv is NAME=VALUE settings for the environment of every
	// process but the front ends (-worker-env), e.g. GOMAXPROCS=1.
	WorkerEnv []string
	// M2Ciphers is Mongrel2's ssl_ciphers setting (mbedTLS names separated
	// by spaces); "" keeps Mongrel2's default preference.
	M2Ciphers string
}

// Case is one row of the benchmark: Setup starts fresh processes on fresh
// ports inside s and returns the URL wrk loads; the case is ready when that
// URL answers 200 with exactly Expect. Within a group (HTTP, HTTPS) the
// ratios compare the "zmq" case with the others by Kind.
type Case struct {
	Name    string // unique, used by -cases: "zmq", "https/zmq", ...
	Kind    string // "zmq", "reverse_proxy", "respond", "mongrel2", "direct", "zmq+control", "zmq+floor", "mongrel2+floor"
	TLS     bool
	Default bool   // run without -cases
	Expect  string // body of a ready target; "" means helloBody
	Method  string // of the measured requests (wrk), "" for GET
	Setup   func(ctx context.Context, s *Stack, env *Env) (url string, err error)
	// Large makes it a large-body case (-large, see large.go): Setup
	// returns the base URL of echo's handlers, and each run is one
	// transfer measured by this program instead of wrk.
	Large *LargeSpec
	// WS makes it a WebSocket case (-ws, see ws.go): Setup returns the
	// ws:// URL of an echo, loaded by this program instead of wrk.
	WS *WSSpec
}

func (c Case) expect() string {
	if c.Expect == "" {
		return helloBody
	}
	return c.Expect
}

// Group is "HTTP" or "HTTPS".
func (c Case) Group() string {
	if c.TLS {
		return "HTTPS"
	}
	return "HTTP"
}

// helloCases is the small-body benchmark: a hello-world handler behind each
// front end. Order is the order of the report.
func helloCases() []Case {
	return []Case{
		{Name: "zmq", Kind: "zmq", Default: true, Setup: setupZmq(false)},
		{Name: "reverse_proxy", Kind: "reverse_proxy", Default: true, Setup: setupReverseProxy(false)},
		{Name: "respond", Kind: "respond", Default: true, Setup: setupRespond(false)},
		{Name: "mongrel2", Kind: "mongrel2", Default: true, Setup: setupMongrel2(false)},
		{Name: "direct", Kind: "direct", Default: true, Setup: setupDirect},
		// The ZeroMQ floor: the same front ends in front of bin/floor-worker,
		// a single-loop worker (recv, format, send) instead of workerkit.
		// The goals (goals.go) compare against them.
		{Name: "zmq/floor", Kind: "zmq+floor", Default: true, Setup: setupZmqFloor(false)},
		{Name: "mongrel2/floor", Kind: "mongrel2+floor", Default: true, Setup: setupMongrel2Floor(false)},
		// The floors of the goals' floors: the floor worker serving a
		// net/http Handler (-handler), the least any worker library that
		// serves Handlers does; and a Go net/http server that bridges to
		// the floor worker with the least work (bin/frontfloor), beside
		// the same server answering by itself. goals.go prints what they
		// give as references beside the goals.
		{Name: "zmq/floor-handler", Kind: "zmq+floor-handler", Default: true, Setup: setupZmqFloor(true)},
		{Name: "mongrel2/floor-handler", Kind: "mongrel2+floor-handler", Default: true, Setup: setupMongrel2Floor(true)},
		{Name: "frontfloor", Kind: "frontfloor", Default: true, Setup: setupFrontFloor(false)},
		{Name: "frontfloor/respond", Kind: "frontfloor-respond", Default: true, Setup: setupFrontFloor(true)},
		{Name: "https/zmq", Kind: "zmq", TLS: true, Default: true, Setup: setupZmq(true)},
		{Name: "https/reverse_proxy", Kind: "reverse_proxy", TLS: true, Default: true, Setup: setupReverseProxy(true)},
		{Name: "https/mongrel2", Kind: "mongrel2", TLS: true, Default: true, Setup: setupMongrel2(true)},
		// The most any Caddy handler serves over HTTPS; the checks' ceiling
		// column needs it.
		{Name: "https/respond", Kind: "respond", TLS: true, Default: true, Setup: setupRespond(true)},
		// zmq with CurveZMQ on both sockets (curve.go), against zmq.
		{Name: "zmq+curve", Kind: "zmq+curve", Default: true, Setup: setupZmqCurve(false)},
		// Not in the default set: zmq with the control channel (zmqx/1:
		// ACKs and reply credit) switched on.
		{Name: "zmq+control", Kind: "zmq+control", Setup: setupZmqControl},
		// A POST with a dispatch deadline waits for CONFIRM before it
		// starts (ZMQX_CONFIRM): the control round trip's cost, beside
		// the GETs of zmq+control.
		{Name: "zmq+control/post", Kind: "zmq+control", Method: "POST", Setup: setupZmqControl},
	}
}

// largeCases is the large-body benchmark (-large, see large.go): a big
// download (echo /big) and a big upload (echo /upload), through zmq with
// the control channel and through reverse_proxy to the same handlers served
// by net/http.
func largeCases() []Case {
	return []Case{
		largeCase("download/zmq+control", "zmq+control", false, setupZmqControlEcho),
		largeCase("download/reverse_proxy", "reverse_proxy", false, setupReverseProxyEcho),
		largeCase("upload/zmq+control", "zmq+control", true, setupZmqControlEcho),
		largeCase("upload/reverse_proxy", "reverse_proxy", true, setupReverseProxyEcho),
		largeCase("download/zmq+control+curve", "zmq+control+curve", false, setupZmqControlEchoCurve),
		largeCase("upload/zmq+control+curve", "zmq+control+curve", true, setupZmqControlEchoCurve),
		// Not in the default set: a bigger reply window (credit per
		// request), to see how much of the download gap is the window.
		func() Case {
			c := largeCase("download/zmq+control+w8M", "zmq+control+w8M", false, setupZmqControlEchoWindow("8MiB"))
			c.Default = false
			return c
		}(),
	}
}

// ---------------------------------------------------------------------------
// Setups

// setupZmq: Caddy's zmq handler in front of bin/hello-worker (workerkit).
func setupZmq(tls bool) func(context.Context, *Stack, *Env) (string, error) {
	return func(ctx context.Context, s *Stack, env *Env) (string, error) {
		p, err := freePorts(2)
		if err != nil {
			return "", err
		}
		req, rep := tcpEndpoint(p[0]), tcpEndpoint(p[1])
		url, err := startCaddy(s, env, tls, fmt.Sprintf("zmq %s %s", req, rep))
		if err != nil {
			return "", err
		}
		_, err = s.Start("hello-worker (zmq)", exec.Command(env.Hello, "-frontend", req+","+rep))
		return url, err
	}
}

// setupZmqFloor: Caddy's zmq handler in front of bin/floor-worker (with
// handler, answering through a net/http Handler).
func setupZmqFloor(handler bool) func(context.Context, *Stack, *Env) (string, error) {
	return func(ctx context.Context, s *Stack, env *Env) (string, error) {
		p, err := freePorts(2)
		if err != nil {
			return "", err
		}
		req, rep := tcpEndpoint(p[0]), tcpEndpoint(p[1])
		url, err := startCaddy(s, env, false, fmt.Sprintf("zmq %s %s", req, rep))
		if err != nil {
			return "", err
		}
		return url, startFloor(s, env, req+","+rep, handler)
	}
}

// setupMongrel2Floor: a real Mongrel2 in front of bin/floor-worker (with
// handler, answering through a net/http Handler).
func setupMongrel2Floor(handler bool) func(context.Context, *Stack, *Env) (string, error) {
	return func(ctx context.Context, s *Stack, env *Env) (string, error) {
		url, frontEnd, err := startMongrel2(ctx, s, env, false)
		if err != nil {
			return "", err
		}
		return url, startFloor(s, env, frontEnd, handler)
	}
}

// startFloor runs bin/floor-worker for the front end at frontEnd
// ("REQUESTS,REPLIES"); with handler, answering through workerkit hello's
// net/http Handler (-handler), under its own process name.
func startFloor(s *Stack, env *Env, frontEnd string, handler bool) error {
	name, args := floorProcess, []string{"-frontend", frontEnd}
	if handler {
		name, args = floorHandlerProcess, append(args, "-handler")
	}
	_, err := s.Start(name, exec.Command(env.Floor, args...))
	return err
}

// setupFrontFloor: bin/frontfloor, a minimal Go bridge, in front of
// bin/floor-worker; with respond, the same server answering by itself.
func setupFrontFloor(respond bool) func(context.Context, *Stack, *Env) (string, error) {
	return func(ctx context.Context, s *Stack, env *Env) (string, error) {
		p, err := freePorts(3)
		if err != nil {
			return "", err
		}
		addr := fmt.Sprintf("127.0.0.1:%d", p[0])
		args := []string{"-listen", addr, "-spin", env.FrontFloorSpin.String()}
		if respond {
			_, err = s.Start(frontFloorProcess, exec.Command(env.FrontFloor, append(args, "-respond")...))
			return "http://" + addr + "/", err
		}
		frontEnd := tcpEndpoint(p[1]) + "," + tcpEndpoint(p[2])
		if _, err = s.Start(frontFloorProcess, exec.Command(env.FrontFloor, append(args, "-frontend", frontEnd)...)); err != nil {
			return "", err
		}
		return "http://" + addr + "/", startFloor(s, env, frontEnd, false)
	}
}

// setupZmqControl: like zmq, plus the control channel (control_endpoint),
// which workerkit workers use when given a third endpoint.
func setupZmqControl(ctx context.Context, s *Stack, env *Env) (string, error) {
	p, err := freePorts(3)
	if err != nil {
		return "", err
	}
	req, rep, ctl := tcpEndpoint(p[0]), tcpEndpoint(p[1]), tcpEndpoint(p[2])
	url, err := startCaddy(s, env, false, fmt.Sprintf("zmq %s %s {\n\t\tcontrol_endpoint %s\n\t}", req, rep, ctl))
	if err != nil {
		return "", err
	}
	_, err = s.Start("hello-worker (zmq+control)", exec.Command(env.Hello, "-frontend", req+","+rep+","+ctl))
	return url, err
}

// setupReverseProxy: Caddy's reverse_proxy in front of the same hello
// handler served by net/http.
func setupReverseProxy(tls bool) func(context.Context, *Stack, *Env) (string, error) {
	return func(ctx context.Context, s *Stack, env *Env) (string, error) {
		addr, err := startHelloHTTP(s, env)
		if err != nil {
			return "", err
		}
		return startCaddy(s, env, tls, "reverse_proxy "+addr)
	}
}

// setupRespond: Caddy answering by itself, the most any Caddy handler serves.
func setupRespond(tls bool) func(context.Context, *Stack, *Env) (string, error) {
	return func(ctx context.Context, s *Stack, env *Env) (string, error) {
		// A Caddyfile quoted token may span lines: this is the body with its
		// newline, byte for byte what hello-worker writes.
		return startCaddy(s, env, tls, `respond "`+helloBody+`"`)
	}
}

// setupMongrel2: a real Mongrel2 in front of the same bin/hello-worker.
func setupMongrel2(tls bool) func(context.Context, *Stack, *Env) (string, error) {
	return func(ctx context.Context, s *Stack, env *Env) (string, error) {
		url, frontEnd, err := startMongrel2(ctx, s, env, tls)
		if err != nil {
			return "", err
		}
		_, err = s.Start("hello-worker (zmq)", exec.Command(env.Hello, "-frontend", frontEnd))
		return url, err
	}
}

// setupDirect: wrk straight at the net/http hello server.
func setupDirect(ctx context.Context, s *Stack, env *Env) (string, error) {
	addr, err := startHelloHTTP(s, env)
	if err != nil {
		return "", err
	}
	return "http://" + addr + "/", nil
}

// ---------------------------------------------------------------------------
// Processes

func tcpEndpoint(port int) string { return fmt.Sprintf("tcp://127.0.0.1:%d", port) }

// startHelloHTTP runs bin/hello-worker -http on a free port; returns host:port.
func startHelloHTTP(s *Stack, env *Env) (string, error) {
	p, err := freePorts(1)
	if err != nil {
		return "", err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", p[0])
	_, err = s.Start("hello-worker (net/http)", exec.Command(env.Hello, "-http", addr))
	return addr, err
}

// startCaddy runs bin/caddy with one site whose only handler is handler
// (a Caddyfile directive line), on free ports, with its own XDG dirs and, for
// TLS, its own certificate storage. Returns the site's URL.
func startCaddy(s *Stack, env *Env, tls bool, handler string) (string, error) {
	p, err := freePorts(3) // site, admin, HTTP port of the HTTPS config
	if err != nil {
		return "", err
	}
	port, admin, httpPort := p[0], p[1], p[2]
	dir, err := s.Dir("caddy")
	if err != nil {
		return "", err
	}
	file := filepath.Join(dir, "Caddyfile")
	conf := caddyfile(tls, port, admin, httpPort, filepath.Join(dir, "storage"), handler)
	if err := os.WriteFile(file, []byte(conf), 0o644); err != nil {
		return "", err
	}
	cmd := exec.Command(env.Caddy, "run", "--config", file, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(),
		"XDG_DATA_HOME="+filepath.Join(dir, "data"),
		"XDG_CONFIG_HOME="+filepath.Join(dir, "config"))
	if _, err := s.Start("caddy", cmd); err != nil {
		return "", err
	}
	if tls {
		return fmt.Sprintf("https://localhost:%d/", port), nil
	}
	return fmt.Sprintf("http://127.0.0.1:%d/", port), nil
}

// caddyfile is the whole config of one Caddy. Caddy logs no accesses by
// default; h3 is off because wrk speaks HTTP/1.1 (and Mongrel2 only that).
func caddyfile(tls bool, port, admin, httpPort int, storage, handler string) string {
	var b strings.Builder
	b.WriteString("{\n")
	fmt.Fprintf(&b, "\tadmin 127.0.0.1:%d\n", admin)
	b.WriteString("\tpersist_config off\n")
	b.WriteString("\tdefault_bind 127.0.0.1\n")
	if tls {
		b.WriteString("\tlocal_certs\n\tskip_install_trust\n")
		fmt.Fprintf(&b, "\tstorage file_system %s\n", storage)
		fmt.Fprintf(&b, "\thttp_port %d\n\thttps_port %d\n", httpPort, port)
		b.WriteString("\tauto_https disable_redirects\n")
		b.WriteString("\tservers {\n\t\tprotocols h1 h2\n\t}\n")
	} else {
		b.WriteString("\tauto_https off\n")
		fmt.Fprintf(&b, "\thttp_port %d\n", port)
	}
	b.WriteString("}\n\n")
	if tls {
		fmt.Fprintf(&b, "https://localhost:%d {\n\ttls internal\n\t%s\n}\n", port, handler)
	} else {
		fmt.Fprintf(&b, ":%d {\n\t%s\n}\n", port, handler)
	}
	return b.String()
}
