package integration

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// mongrel2 is a real Mongrel2 (Debian's mongrel2-core) running from a
// temporary chroot on free ports.
type mongrel2 struct {
	proc     *process
	Port     int    // HTTP
	Requests string // send_spec: Mongrel2 BINDS PUSH, handlers connect PULL
	Replies  string // recv_spec: Mongrel2 BINDS SUB, handlers connect PUB
}

func (m *mongrel2) FrontEnd() string { return m.Requests + "," + m.Replies }

const (
	m2ServerUUID = "f400bf85-4538-4f7a-8908-67e313d515c2"
	m2SendIdent  = "34f9ceee-cd52-4b7f-b197-88bf2f0ec378"
)

// startMongrel2 loads a config with m2sh and runs mongrel2 in the
// foreground, retrying with other ports if one was taken meanwhile.
func startMongrel2(t *testing.T) *mongrel2 {
	t.Helper()
	m2sh := needFile(t, "/usr/bin/m2sh", "run make deps (mongrel2-core)")
	bin := needFile(t, "/usr/bin/mongrel2", "run make deps (mongrel2-core)")
	var lastErr error
	for attempt := 1; attempt <= 4; attempt++ {
		m, err := tryStartMongrel2(t, m2sh, bin)
		if err == nil {
			return m
		}
		lastErr = err
		if !strings.Contains(strings.ToLower(err.Error()), "address already in use") {
			break
		}
		t.Logf("mongrel2 attempt %d: %v; retrying with other ports", attempt, err)
	}
	t.Fatalf("starting mongrel2: %v", lastErr)
	return nil
}

func tryStartMongrel2(t *testing.T, m2sh, bin string) (*mongrel2, error) {
	ports := freePorts(t, 3)
	m := &mongrel2{Port: ports[0], Requests: tcpEndpoint(ports[1]), Replies: tcpEndpoint(ports[2])}
	dir := t.TempDir() // the chroot
	for _, d := range []string{"run", "logs", "tmp"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	conf := fmt.Sprintf(`handler = Handler(send_spec='%s', send_ident='%s',
                  recv_spec='%s', recv_ident='')
main = Server(uuid="%s", access_log="/logs/access.log",
    error_log="/logs/error.log", chroot="./", pid_file="/run/mongrel2.pid",
    default_host="localhost", name="main", bind_addr="127.0.0.1", port=%d,
    hosts=[Host(name="localhost", routes={'/': handler})])
settings = {"server.daemonize": 0, "disable.access_logging": 1}
servers = [main]
`, m.Requests, m2SendIdent, m.Replies, m2ServerUUID, m.Port)
	if err := os.WriteFile(filepath.Join(dir, "mongrel2.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	logname := "root"
	if u, err := user.Current(); err == nil {
		logname = u.Username
	}
	env := append(os.Environ(), "LOGNAME="+logname)
	load := exec.Command(m2sh, "load", "-config", "mongrel2.conf", "-db", "config.sqlite")
	load.Dir = dir
	load.Env = env
	if out, err := load.CombinedOutput(); err != nil {
		t.Fatalf("m2sh load: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "config.sqlite", m2ServerUUID)
	cmd.Dir = dir
	cmd.Env = env
	m.proc = startProcess(t, "mongrel2", cmd)
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(filepath.Join(dir, "logs", "error.log")); err == nil {
				t.Logf("----- mongrel2 logs/error.log -----\n%s", tail(string(b), 32<<10))
			}
		}
	})
	err := poll(startTimeout, func() error {
		if m.proc.Exited() {
			log, _ := os.ReadFile(filepath.Join(dir, "logs", "error.log"))
			return fmt.Errorf("mongrel2 exited (%v): %s %s", m.proc.err, m.proc.out.String(), log)
		}
		return nil
	}, func() error {
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", m.Port), time.Second)
		if err != nil {
			return err
		}
		return conn.Close()
	})
	if err != nil {
		m.proc.Stop()
		return nil, err
	}
	return m, nil
}

func (m *mongrel2) target(t *testing.T, worker string) target {
	client := newClient(modeHTTP, nil)
	t.Cleanup(client.CloseIdleConnections)
	return target{
		Client: client, Mode: modeHTTP, Base: fmt.Sprintf("http://127.0.0.1:%d", m.Port),
		Worker: worker, Host: fmt.Sprintf("127.0.0.1:%d", m.Port), SetCookie: true,
	}
}

// TestInteropMongrel2Workerkit: a real Mongrel2 in front of a workerkit
// worker (integration/testworker) passes the basic suite.
func TestInteropMongrel2Workerkit(t *testing.T) {
	m := startMongrel2(t)
	w := startTestworker(t, "testworker", m.FrontEnd())
	tg := m.target(t, "testworker")
	waitWorker(t, tg.Client, tg.URL("/ready"), "testworker", m.proc, w)
	basicSuite(t, tg)
	t.Run("streamed reply", func(t *testing.T) {
		// Few chunks: Mongrel2 disconnects a client with more than 16
		// replies queued for it, and each flushed chunk is one reply.
		r := mustDo(t, tg.Client, "GET", tg.URL("/stream?n=8"), nil, nil)
		var want strings.Builder
		for i := 0; i < 8; i++ {
			fmt.Fprintf(&want, "chunk %d\n", i)
		}
		if r.StatusCode != 200 || string(r.Body) != want.String() {
			t.Errorf("got %s %q", r.Status, tail(string(r.Body), 300))
		}
	})
}

// TestInteropMongrel2Python checks the fixtures themselves: Mongrel2 in
// front of testdata/m2handler.py passes the basic suite. If this fails, the
// Python handler or the suite is wrong, not the project's code.
func TestInteropMongrel2Python(t *testing.T) {
	m := startMongrel2(t)
	h := startPythonHandler(t, m.Requests, m.Replies)
	tg := m.target(t, "m2handler")
	waitWorker(t, tg.Client, tg.URL("/ready"), "m2handler", m.proc, h)
	basicSuite(t, tg)
}

// TestInteropCaddyPython: a Mongrel2 handler written in Python with pyzmq
// (no workerkit) behind the module passes the basic suite, over plain HTTP
// and over HTTPS with HTTP/2.
func TestInteropCaddyPython(t *testing.T) {
	t.Run("http", func(t *testing.T) {
		c := startCaddy(t, caddyOpts{Config: "caddyfiles/http-only.Caddyfile"})
		h := startPythonHandler(t, c.Endpoint("ZMQ_REQUESTS"), c.Endpoint("ZMQ_REPLIES"))
		tg := c.target(t, modeHTTP, "m2handler")
		waitWorker(t, tg.Client, tg.URL("/ready"), "m2handler", c.proc, h)
		basicSuite(t, tg)
	})
	t.Run("h2", func(t *testing.T) {
		c := startCaddy(t, caddyOpts{Config: "caddyfiles/Caddyfile", HTTPS: true})
		h := startPythonHandler(t, c.Endpoint("ZMQ_REQUESTS"), c.Endpoint("ZMQ_REPLIES"))
		tg := c.target(t, modeH2, "m2handler")
		waitWorker(t, tg.Client, tg.URL("/ready"), "m2handler", c.proc, h)
		basicSuite(t, tg)
		t.Run("pattern header", func(t *testing.T) {
			e := decodeEcho(t, mustDo(t, tg.Client, "GET", tg.URL("/p"), nil, nil))
			if e.Pattern != "/" {
				t.Errorf("PATTERN %q, want /", e.Pattern)
			}
		})
	})
}
