package integration

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/zmqbridge/caddy-zmq/internal/wsclient"
)

// WebSockets end to end (docs/websockets.md): a real bin/caddy with
// caddyfiles/websockets.Caddyfile, clients speaking RFC 6455 on the wire
// (internal/wsclient, so the tests see the exact frames and close codes).

// startPythonWS runs testdata/m2ws.py, Mongrel2's WebSocket echo example.
func startPythonWS(t testing.TB, requests, replies string) *process {
	t.Helper()
	py := needFile(t, "/usr/bin/python3", "run make deps (python3-zmq)")
	if err := exec.Command(py, "-c", "import zmq").Run(); err != nil {
		if integrationRequired() {
			t.Fatalf("python3-zmq is missing (run make deps): %v", err)
		}
		t.Skipf("python3-zmq is missing: %v", err)
	}
	cmd := command(t, py, "-u", repoPath("integration", "testdata", "m2ws.py"), "--requests", requests, "--replies", replies)
	p := startProcess(t, "m2ws.py", cmd)
	p.MustWaitFor("READY", startTimeout)
	return p
}

// dialWS opens a WebSocket to path on c, over TLS (chain verified against
// Caddy's local CA) when tlsOn.
func dialWS(t testing.TB, c *caddy, tlsOn bool, path string) (*wsclient.Conn, error) {
	t.Helper()
	var conn net.Conn
	var err error
	host := fmt.Sprintf("127.0.0.1:%d", c.HTTPPort)
	if tlsOn {
		host = fmt.Sprintf("localhost:%d", c.HTTPSPort)
		conn, err = tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", c.HTTPSPort),
			&tls.Config{RootCAs: c.roots, ServerName: "localhost", NextProtos: []string{"http/1.1"}})
	} else {
		conn, err = net.Dial("tcp", host)
	}
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(requestTimeout))
	ws, _, err := wsclient.Handshake(conn, host, path, nil)
	if err != nil {
		conn.Close()
		return nil, err
	}
	t.Cleanup(func() { ws.Close() })
	return ws, nil
}

// mustDialWS polls until the handshake succeeds (the worker may still be
// joining).
func mustDialWS(t testing.TB, c *caddy, tlsOn bool, path string, procs ...*process) *wsclient.Conn {
	t.Helper()
	var ws *wsclient.Conn
	err := poll(startTimeout, anyExited(procs), func() error {
		var err error
		ws, err = dialWS(t, c, tlsOn, path)
		return err
	})
	if err != nil {
		t.Fatalf("websocket handshake on %s: %v", path, err)
	}
	return ws
}

func expectFrame(t testing.TB, ws *wsclient.Conn, wantB0 byte, want []byte) {
	t.Helper()
	b0, p, err := ws.ReadFrame()
	if err != nil || b0 != wantB0 || !bytes.Equal(p, want) {
		t.Fatalf("got frame %#x of %d bytes (%v), want %#x of %d bytes %.40q", b0, len(p), err, wantB0, len(want), want)
	}
}

// TestWebSocketMongrel2Handler: Mongrel2's own WebSocket echo handler works
// unchanged behind Caddy, over HTTP and HTTPS, and a quiet socket outlives
// Caddy's HTTP timeouts.
func TestWebSocketMongrel2Handler(t *testing.T) {
	c := startCaddy(t, caddyOpts{Config: "caddyfiles/websockets.Caddyfile", HTTPS: true,
		Env: map[string]string{"HTTP_TIMEOUT": "1s", "WS_MAX_MESSAGE": "1MiB"}})
	py := startPythonWS(t, c.Endpoint("ZMQ_REQUESTS"), c.Endpoint("ZMQ_REPLIES"))
	for _, tlsOn := range []bool{false, true} {
		t.Run(fmt.Sprintf("tls=%v", tlsOn), func(t *testing.T) {
			ws := mustDialWS(t, c, tlsOn, "/echo", c.proc, py)
			if err := ws.WriteText("héllo"); err != nil {
				t.Fatal(err)
			}
			expectFrame(t, ws, 0x81, []byte("héllo"))
			bin := bytes.Repeat([]byte{0, 1, 2, 0xff}, 50000) // 64-bit length
			if err := ws.WriteFrame(0x82, bin); err != nil {
				t.Fatal(err)
			}
			expectFrame(t, ws, 0x82, bin)
			// Fragments arrive reassembled; the ping between them first.
			_ = ws.WriteFrame(0x01, []byte("frag"))
			_ = ws.WriteFrame(0x89, []byte("ping"))
			_ = ws.WriteFrame(0x80, []byte("ment"))
			expectFrame(t, ws, 0x8A, []byte("ping"))
			expectFrame(t, ws, 0x81, []byte("fragment"))
			// Quiet for longer than Caddy's read, write and idle timeouts.
			quiet := time.NewTimer(1500 * time.Millisecond)
			<-quiet.C
			if err := ws.WriteText("still here"); err != nil {
				t.Fatal(err)
			}
			expectFrame(t, ws, 0x81, []byte("still here"))
			// Too big: close 1009, and the handler hears the disconnect.
			big := mustDialWS(t, c, tlsOn, "/echo", c.proc, py)
			_ = big.WriteFrame(0x82, make([]byte, 1<<20+1))
			if code, err := big.ReadClose(); err != nil || code != 1009 {
				t.Fatalf("oversized message: close %d (%v), want 1009", code, err)
			}
			// The client closes: the handler echoes it and ends the
			// connection.
			if err := ws.WriteFrame(0x88, []byte{0x03, 0xE8, 'o', 'k'}); err != nil {
				t.Fatal(err)
			}
			if code, err := ws.ReadClose(); err != nil || code != 1000 {
				t.Fatalf("close echo: %d (%v)", code, err)
			}
			if _, _, err := ws.ReadFrame(); err == nil {
				t.Fatal("connection still open after the handler's empty reply")
			}
		})
	}
	py.MustWaitFor("DISCONNECT", requestTimeout)
	if out := py.out.String(); strings.Contains(out, "Traceback") {
		t.Fatalf("m2ws.py failed:\n%s", tail(out, 40))
	}
}
