package integration

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/zmqbridge/caddy-zmq/internal/wsclient"
	"github.com/zmqbridge/caddy-zmq/internal/wsframe"
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

// wschatBin is bin/wschat-worker (make build).
func wschatBin(t testing.TB) string {
	return needFile(t, repoPath("bin", "wschat-worker"), "run make build")
}

// startWSChat runs caddyfiles/websockets.Caddyfile (HTTPS too) with one
// wschat worker on its control channel.
func startWSChat(t *testing.T, env map[string]string) (*caddy, *process) {
	t.Helper()
	bin := wschatBin(t)
	c := startCaddy(t, caddyOpts{Config: "caddyfiles/websockets.Caddyfile", HTTPS: true, Env: env})
	w := startProcess(t, "wschat", command(t, bin, "-frontend", c.FrontEndControl(), "-ping", "0"))
	waitControlWorkers(t, c, 1, w)
	return c, w
}

// echoToken sends tok on ws and wants it back, as text.
func echoToken(ws *wsclient.Conn, tok string) error {
	if err := ws.WriteText(tok); err != nil {
		return err
	}
	b0, p, err := ws.ReadFrame()
	if err != nil {
		return err
	}
	if b0 != 0x81 || string(p) != tok {
		return fmt.Errorf("sent %q, got %#x %q", tok, b0, p)
	}
	return nil
}

// TestWebSocketWorkerkit: the wschat example behind a real Caddy: a reload
// keeps sockets open, 1000 concurrent sockets never see another's token, a
// 16 MiB message goes each way with bounded memory, a killed worker's
// clients get 1011 within the liveness bound, and Caddy's shutdown sends
// 1001.
func TestWebSocketWorkerkit(t *testing.T) {
	c, w := startWSChat(t, nil)
	first := mustDialWS(t, c, true, "/echo", c.proc, w)
	if err := echoToken(first, "before reload"); err != nil {
		t.Fatal(err)
	}

	t.Run("reload keeps sockets open", func(t *testing.T) {
		// Messages keep flowing while the config is replaced.
		errc := make(chan error, 1)
		stop := make(chan struct{})
		go func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					errc <- nil
					return
				default:
				}
				if err := echoToken(first, fmt.Sprintf("during reload %d", i)); err != nil {
					errc <- err
					return
				}
			}
		}()
		if err := c.Reload(map[string]string{"WS_MAX_MESSAGE": "32MiB"}); err != nil {
			close(stop)
			t.Fatal(err)
		}
		close(stop)
		if err := <-errc; err != nil {
			t.Fatalf("socket broke during the reload: %v", err)
		}
		if err := echoToken(first, "after reload"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("1000 sockets, own tokens", func(t *testing.T) {
		const n = 1000
		conns := make([]*wsclient.Conn, n)
		errs := make(chan error, n)
		sem := make(chan struct{}, 32)
		for i := range n {
			sem <- struct{}{}
			go func() {
				defer func() { <-sem }()
				ws, err := dialWS(t, c, false, "/echo")
				conns[i] = ws
				errs <- err
			}()
		}
		for range n {
			if err := <-errs; err != nil {
				t.Fatalf("opening sockets: %v", err)
			}
		}
		// Every socket open at once exchanges its own tokens.
		for i := range n {
			go func() {
				for k := range 3 {
					if err := echoToken(conns[i], fmt.Sprintf("socket %d token %d %s", i, k, newToken("ws"))); err != nil {
						errs <- fmt.Errorf("socket %d: %w", i, err)
						return
					}
				}
				errs <- nil
			}()
		}
		for range n {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		for _, ws := range conns {
			ws.Close()
		}
	})

	t.Run("16 MiB each way", func(t *testing.T) {
		ws := mustDialWS(t, c, false, "/echo", c.proc, w)
		_ = ws.SetDeadline(time.Now().Add(2 * requestTimeout))
		msg := bytes.Repeat([]byte("0123456789abcdef"), 1<<20) // 16 MiB
		rss := startRSS(t, c.proc, w)
		done := make(chan error, 1)
		go func() { done <- ws.WriteFrame(0x82, msg) }()
		b0, p, err := ws.ReadFrame()
		if err != nil || b0 != 0x82 || !bytes.Equal(p, msg) {
			t.Fatalf("16 MiB echo: %#x, %d bytes, %v", b0, len(p), err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		// Each side holds the message a few times over (reassembled,
		// framed for ZeroMQ, in flight): bounded by the message size, not
		// growing with traffic.
		rss.Check("16 MiB each way", 8*16*sMiB)
	})

	t.Run("worker killed: 1011 within the liveness bound", func(t *testing.T) {
		ws := mustDialWS(t, c, false, "/echo", c.proc, w)
		if err := echoToken(ws, "alive"); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		if err := syscall.Kill(pidOf(w), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		code, err := ws.ReadClose()
		if err != nil || code != 1011 {
			t.Fatalf("after the worker died: close %d (%v), want 1011", code, err)
		}
		took := time.Since(killed)
		t.Logf("close 1011 %s after the kill", took.Round(time.Millisecond))
		if took > 5*time.Second {
			t.Errorf("1011 took %s, past the liveness bound", took)
		}
	})

	t.Run("Caddy shutdown sends 1001", func(t *testing.T) {
		w2 := startProcess(t, "wschat-2", command(t, wschatBin(t), "-frontend", c.FrontEndControl(), "-ping", "0"))
		ws := mustDialWS(t, c, true, "/echo", c.proc, w2)
		if err := echoToken(ws, "alive"); err != nil {
			t.Fatal(err)
		}
		stopped := make(chan error, 1)
		go func() { stopped <- c.proc.Stop() }()
		code, err := ws.ReadClose()
		if err != nil || code != 1001 {
			t.Fatalf("at Caddy's shutdown: close %d (%v), want 1001", code, err)
		}
		<-stopped
	})
}

// TestWebSocketBrowser: headless Chromium opens the wschat page through
// Caddy over HTTPS and exchanges text and binary messages with the worker
// over wss://. Chromium does not trust Caddy's private CA: it is told to
// accept the certificate whose key the test read from Caddy (the Go
// clients of the other tests verify the chain).
func TestWebSocketBrowser(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Skipf("%s is not installed (Debian package chromium): skipping the browser test", chromiumPath)
	}
	c, w := startWSChat(t, nil)
	mustDialWS(t, c, true, "/echo", c.proc, w).Close() // the site's certificate is issued
	b := startBrowser(t, c.HTTPSURL("/"), "--ignore-certificate-errors-spki-list="+leafSPKI(t, c))
	var state string
	err := poll(startTimeout, b.exited, func() error {
		if err := b.eval(`(document.getElementById("state") || {}).textContent || ""`, &state); err != nil {
			return err
		}
		if state != "connected" {
			return fmt.Errorf("page state %q", state)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the page's WebSocket did not open: %v", err)
	}
	tok := newToken("browser")
	if err := b.eval(`(ws.send(`+strconv.Quote(tok)+`), document.getElementById("bin").click(), true)`, new(bool)); err != nil {
		t.Fatal(err)
	}
	want := []string{tok, "binary 1,2,3,255", "binary message of 4 bytes"}
	var got []string
	err = poll(requestTimeout, b.exited, func() error {
		if err := b.eval(`received`, &got); err != nil {
			return err
		}
		for _, s := range want {
			if !slices.Contains(got, s) {
				return fmt.Errorf("page received %q, waiting for %q", got, s)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// leafSPKI is the base64 SHA-256 of the public key of the certificate Caddy
// serves for localhost.
func leafSPKI(t *testing.T, c *caddy) string {
	t.Helper()
	conn, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", c.HTTPSPort), &tls.Config{RootCAs: c.roots, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sum := sha256.Sum256(conn.ConnectionState().PeerCertificates[0].RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

// TestWebSocketAffinity: with two workers, each socket's messages reach the
// worker that took its handshake (over the control channel), never the
// other: each wschat worker has its own room, so a message sent to the
// wrong worker would be dropped there and never come back to its sender.
// Small and large messages alike.
func TestWebSocketAffinity(t *testing.T) {
	c, w1 := startWSChat(t, nil)
	w2 := startProcess(t, "wschat-2", command(t, wschatBin(t), "-frontend", c.FrontEndControl(), "-ping", "0"))
	waitControlWorkers(t, c, 2, w1, w2)
	const n = 16
	errs := make(chan error, n)
	for i := range n {
		ws := mustDialWS(t, c, false, "/ws", c.proc, w1, w2)
		go func() {
			for k := range 5 {
				tok := fmt.Sprintf("socket %d message %d %s", i, k, newToken("aff"))
				if k == 2 {
					// Large: read straight into its REQ (module/websocket_place.go).
					tok += strings.Repeat(".", 80<<10)
				}
				if err := ws.WriteText(tok); err != nil {
					errs <- err
					return
				}
				// Others' messages in the same room come too: skip them.
				for {
					b0, p, err := ws.ReadFrame()
					if err != nil {
						errs <- fmt.Errorf("socket %d waiting for %q: %w", i, tok, err)
						return
					}
					if b0 == 0x81 && string(p) == tok {
						break
					}
				}
			}
			errs <- nil
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// TestWebSocketHTTP2: with GODEBUG=http2xconnect=1 Caddy's HTTP/2 server
// offers extended CONNECT (RFC 8441); a WebSocket opened that way reaches
// the worker as the HTTP/1.1 upgrade it knows, and frames flow on the
// stream both ways.
func TestWebSocketHTTP2(t *testing.T) {
	c, w := startWSChat(t, map[string]string{"GODEBUG": "http2xconnect=1"})
	mustDialWS(t, c, true, "/echo", c.proc, w).Close() // the certificate is issued
	// golang.org/x/net/http2's Transport, used directly: net/http's
	// refuses the :protocol pseudo-header before HTTP/2 sees it.
	tr := &http2.Transport{TLSClientConfig: &tls.Config{RootCAs: c.roots, ServerName: "localhost"}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	pr, pw := io.Pipe()
	defer pw.Close()
	req, _ := http.NewRequest(http.MethodConnect, c.HTTPSURL("/echo"), pr)
	req.Header.Set(":protocol", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
		t.Fatalf("extended CONNECT: %s over %s", resp.Status, resp.Proto)
	}
	br := bufio.NewReader(resp.Body)
	for i := range 3 {
		tok := fmt.Sprintf("over h2 %d %s", i, newToken("h2"))
		go pw.Write(wsframe.AppendMasked(nil, 0x81, []byte(tok), [4]byte{1, 2, 3, 4}))
		b0, p, err := wsframe.ReadServerFrame(br, 0)
		if err != nil || b0 != 0x81 || string(p) != tok {
			t.Fatalf("echo over h2: %#x %q %v, want %q", b0, p, err, tok)
		}
	}
	go pw.Write(wsframe.AppendMasked(nil, 0x88, []byte{0x03, 0xE8}, [4]byte{1, 2, 3, 4}))
	b0, p, err := wsframe.ReadServerFrame(br, 0)
	if err != nil || b0 != 0x88 || !bytes.Equal(p, []byte{0x03, 0xE8}) {
		t.Fatalf("close echo over h2: %#x % x %v", b0, p, err)
	}
}

// TestWebSocketInteropMongrel2: a real Mongrel2 in front of the workerkit
// WebSocket example: the other direction of interop.
func TestWebSocketInteropMongrel2(t *testing.T) {
	m := startMongrel2(t)
	w := startProcess(t, "wschat", command(t, wschatBin(t), "-frontend", m.FrontEnd(), "-ping", "0"))
	var ws *wsclient.Conn
	err := poll(startTimeout, anyExited([]*process{m.proc, w}), func() error {
		conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", m.Port))
		if err != nil {
			return err
		}
		_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
		ws, _, err = wsclient.Handshake(conn, "localhost", "/echo", nil)
		if err != nil {
			conn.Close()
		}
		return err
	})
	if err != nil {
		t.Fatalf("handshake through Mongrel2: %v", err)
	}
	defer ws.Close()
	_ = ws.SetDeadline(time.Now().Add(requestTimeout))
	if err := echoToken(ws, newToken("m2")); err != nil {
		t.Fatal(err)
	}
	bin := bytes.Repeat([]byte{7, 0, 255}, 30000)
	if err := ws.WriteFrame(0x82, bin); err != nil {
		t.Fatal(err)
	}
	expectFrame(t, ws, 0x82, bin)
	if err := ws.WriteFrame(0x89, []byte("p")); err != nil {
		t.Fatal(err)
	}
	expectFrame(t, ws, 0x8A, []byte("p"))
	if err := ws.WriteFrame(0x88, []byte{0x03, 0xE8}); err != nil {
		t.Fatal(err)
	}
	if code, err := ws.ReadClose(); err != nil || code != 1000 {
		t.Fatalf("close through Mongrel2: %d (%v)", code, err)
	}
}

// TestWebSocketBrowserMongrel2Handler: headless Chromium exchanges text and
// binary messages over wss:// through Caddy with Mongrel2's own WebSocket
// echo handler (testdata/m2ws.py).
func TestWebSocketBrowserMongrel2Handler(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Skipf("%s is not installed (Debian package chromium): skipping the browser test", chromiumPath)
	}
	c := startCaddy(t, caddyOpts{Config: "caddyfiles/websockets.Caddyfile", HTTPS: true})
	py := startPythonWS(t, c.Endpoint("ZMQ_REQUESTS"), c.Endpoint("ZMQ_REPLIES"))
	mustDialWS(t, c, true, "/echo", c.proc, py).Close()
	b := startBrowser(t, c.HTTPSURL("/"), "--ignore-certificate-errors-spki-list="+leafSPKI(t, c))
	tok := newToken("m2browser")
	script := `window.got = []; window.sock = new WebSocket("wss://" + location.host + "/echo");
		sock.binaryType = "arraybuffer";
		sock.onopen = () => { sock.send(` + strconv.Quote(tok) + `); sock.send(new Uint8Array([0, 128, 255])); };
		sock.onmessage = (e) => got.push(typeof e.data === "string" ? e.data : "binary " + new Uint8Array(e.data).join(","));
		true`
	err := poll(startTimeout, b.exited, func() error {
		// The page itself, not the about:blank before it.
		var ready string
		if err := b.eval(`location.protocol + document.readyState`, &ready); err != nil || ready != "https:complete" {
			return fmt.Errorf("page %q (%v)", ready, err)
		}
		return b.eval(script, new(bool))
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{tok, "binary 0,128,255"}
	var got []string
	err = poll(requestTimeout, b.exited, func() error {
		if err := b.eval(`window.got`, &got); err != nil {
			return err
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("page received %q, want %q", got, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
