package integration

// CURVE end to end: caddyfiles/curve.Caddyfile with the real bin/caddy and
// bin/testworker. Caddy is the CURVE server on its three sockets; only
// workers whose key file is in ZMQ_CURVE_KEYS get in.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// curveKeygen makes a worker keypair with `caddy zmq keygen` at base
// (base.key, base.key_secret) and returns the public key it printed.
func curveKeygen(t testing.TB, base string) string {
	t.Helper()
	out, err := exec.Command(caddyBin(t), "zmq", "keygen", "--out", base).Output()
	if err != nil {
		t.Fatalf("caddy zmq keygen --out %s: %v", base, err)
	}
	return strings.TrimSpace(string(out))
}

// curveFrontEndKey runs `caddy zmq frontend-key` in Caddy's environment
// (its storage), as an operator would on the front end's host.
func curveFrontEndKey(t testing.TB, c *caddy) string {
	t.Helper()
	cmd := exec.Command(caddyBin(t), "zmq", "frontend-key")
	cmd.Env = c.env
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("caddy zmq frontend-key: %v", err)
	}
	key := strings.TrimSpace(string(out))
	if len(key) != 40 {
		t.Fatalf("caddy zmq frontend-key printed %q, want a 40-character Z85 key", key)
	}
	return key
}

// startCurveWorker runs bin/testworker with CURVE flags (serverKey and
// keyFile empty: plaintext).
func startCurveWorker(t testing.TB, name, frontEnd, serverKey, keyFile string) *process {
	t.Helper()
	args := []string{"-name", name, "-frontend", frontEnd}
	if serverKey != "" {
		args = append(args, "-curve-server-key", serverKey, "-curve-key", keyFile)
	}
	cmd := exec.Command(testworkerBin(t), args...)
	cmd.Dir = t.TempDir()
	return startProcess(t, name, cmd)
}

// startCurveCaddy runs caddyfiles/curve.Caddyfile with keys as its allowed
// keys directory.
func startCurveCaddy(t testing.TB, keys string) *caddy {
	t.Helper()
	return startCaddy(t, caddyOpts{Config: "caddyfiles/curve.Caddyfile", HTTPS: true,
		Env: map[string]string{"ZMQ_CURVE_KEYS": keys}})
}

// allowKey copies a worker's public key file into the allowed keys
// directory.
func allowKey(t testing.TB, keyDir, base string) {
	t.Helper()
	data, err := os.ReadFile(base + ".key")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(keyDir, filepath.Base(base)+".key"), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// curveTestDir needs bin/caddy and bin/testworker, and makes a test
// directory for key files with an empty allow-list directory, keyDir, in it.
// curveWorkerKey is a worker's key pair made by `caddy zmq keygen`.
type curveWorkerKey struct {
	public     string // Z85
	secretFile string
}

// startCurveCaddyAllowing starts Caddy with caddyfiles/curve.Caddyfile and
// one worker key, named name, on its allow-list: the setup most CURVE
// tests begin with. It returns Caddy, its public key and the worker's keys.
func startCurveCaddyAllowing(t *testing.T, name string) (*caddy, string, curveWorkerKey) {
	t.Helper()
	dir, keyDir := curveTestDir(t)
	base := filepath.Join(dir, name)
	key := curveWorkerKey{public: curveKeygen(t, base), secretFile: base + ".key_secret"}
	allowKey(t, keyDir, base)
	c := startCurveCaddy(t, keyDir)
	return c, curveFrontEndKey(t, c), key
}

func curveTestDir(t *testing.T) (dir, keyDir string) {
	t.Helper()
	caddyBin(t)
	testworkerBin(t)
	dir = t.TempDir()
	keyDir = filepath.Join(dir, "allowed")
	if err := os.Mkdir(keyDir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, keyDir
}

// TestCurveWorkers: with curve on, workers that are plaintext, have an
// unknown key, or have a wrong server key get no request (clients get 503,
// Caddy's log says why for each, once); an allowed workerkit worker serves
// over CURVE on all three sockets, and then only it answers.
func TestCurveWorkers(t *testing.T) {
	dir, keyDir := curveTestDir(t)
	good := filepath.Join(dir, "good")
	stranger := filepath.Join(dir, "stranger")
	goodPub := curveKeygen(t, good)
	strangerPub := curveKeygen(t, stranger)
	notServer := curveKeygen(t, filepath.Join(dir, "not-the-server"))

	c := startCurveCaddy(t, keyDir)
	c.proc.MustWaitFor("no worker key is allowed", startTimeout)
	serverKey := curveFrontEndKey(t, c)
	fe := c.FrontEndControl()
	client := c.Client(modeH2)
	t.Cleanup(client.CloseIdleConnections)

	allowKey(t, keyDir, good)
	if err := c.Reload(nil); err != nil {
		t.Fatal(err)
	}

	plain := startCurveWorker(t, "plain", fe, "", "")
	unknown := startCurveWorker(t, "unknown", fe, serverKey, stranger+".key_secret")
	wrongServer := startCurveWorker(t, "wrong-server", fe, notServer, good+".key_secret")
	for _, want := range []string{`"reason":"unknown_key"`, `"reason":"wrong_server_key"`, strangerPub} {
		c.proc.MustWaitFor(want, startTimeout)
	}
	// A plaintext peer and Caddy both see the mechanism mismatch; the one
	// that sees it first hangs up, and the other sees only that.
	err := poll(startTimeout, nil, func() error {
		out := c.proc.out.String()
		if strings.Contains(out, `"reason":"plaintext"`) || strings.Contains(out, `"reason":"handshake_failed"`) {
			return nil
		}
		return errors.New("no log line for the plaintext worker")
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []*process{unknown, wrongServer} {
		w.MustWaitFor("CURVE handshake with the front end failed", startTimeout)
	}
	for i := range 5 {
		r := mustDo(t, client, http.MethodGet, c.HTTPSURL(fmt.Sprintf("/refused/%d", i)), nil, nil)
		if r.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("request %d with only refused workers: %d %q, want 503", i, r.StatusCode, r.Body)
		}
	}
	// Once per worker, not once per retry (libzmq redials every ~100 ms).
	out := c.proc.out.String()
	if n := strings.Count(out, `"reason":"unknown_key"`); n != 1 {
		t.Errorf("unknown key logged %d times, want 1", n)
	}

	goodW := startCurveWorker(t, "good", fe, serverKey, good+".key_secret")
	waitWorker(t, client, c.HTTPSURL("/ready"), "good", goodW, c.proc)
	if !strings.Contains(goodW.out.String(), "control channel connected") {
		goodW.MustWaitFor("control channel connected", startTimeout)
	}
	for i := range 20 {
		tok := newToken("curve")
		r := mustDo(t, client, http.MethodPost, c.HTTPSURL("/echo/"+tok), strings.NewReader("body-"+tok), nil)
		e := decodeEcho(t, r)
		if r.StatusCode != http.StatusOK || e.Worker != "good" || e.Body != "body-"+tok {
			t.Fatalf("request %d: %d from %q body %q, want 200 from good echoing its body", i, r.StatusCode, e.Worker, e.Body)
		}
	}
	for _, w := range []*process{plain, unknown, wrongServer} {
		if strings.Contains(w.out.String(), "front end subscribed") {
			t.Errorf("%s: a refused worker was subscribed to (it could have taken work):\n%s", w.name, w.out.String())
		}
	}
	if strings.Contains(c.proc.out.String(), `"public_key":"`+goodPub+`"`) {
		t.Errorf("the allowed key was refused:\n%s", c.proc.out.String())
	}
}

// TestCurveReloadUnderLoad: a worker refused because its key is not
// allowed gets in by itself once the key is added and Caddy reloaded,
// while the allowed worker keeps serving a steady load with no failed
// request.
func TestCurveReloadUnderLoad(t *testing.T) {
	dir, keyDir := curveTestDir(t)
	staying, joining := filepath.Join(dir, "staying"), filepath.Join(dir, "joining")
	curveKeygen(t, staying)
	curveKeygen(t, joining)
	allowKey(t, keyDir, staying)
	c := startCurveCaddy(t, keyDir)
	serverKey := curveFrontEndKey(t, c)
	fe := c.FrontEndControl()
	stayW := startCurveWorker(t, "staying", fe, serverKey, staying+".key_secret")
	joinW := startCurveWorker(t, "joining", fe, serverKey, joining+".key_secret")
	client := c.Client(modeH2)
	t.Cleanup(client.CloseIdleConnections)
	waitWorker(t, client, c.HTTPSURL("/ready"), "staying", stayW, c.proc)
	joinW.MustWaitFor("CURVE handshake with the front end failed", startTimeout)

	const clients = 4
	cls := make([]*http.Client, clients)
	for i := range cls {
		cls[i] = c.Client(modeH2)
		t.Cleanup(cls[i].CloseIdleConnections)
	}
	l := rtStartLoad(clients, 2*time.Minute, func(i, n int) rtHit {
		return rtSend(cls[i], http.MethodGet, c.HTTPSURL("/load/{tok}"), "", nil, requestTimeout)
	})
	defer l.stop()
	l.waitUntil(t, startTimeout, "load before the reload", func(hits []rtHit) error {
		if len(hits) < 50 {
			return fmt.Errorf("%d requests done", len(hits))
		}
		return nil
	})
	allowKey(t, keyDir, joining)
	if err := c.Reload(nil); err != nil {
		t.Fatal(err)
	}
	l.waitUntil(t, 30*time.Second, "the joining worker answers", func(hits []rtHit) error {
		for _, h := range hits {
			if h.ok() && h.Worker == "joining" {
				return nil
			}
		}
		return errors.New("no answer from the joining worker yet")
	})
	hits := l.stop()
	rtReportFailures(t, "allow-list change by reload", len(hits), rtFailures(hits))
	joinW.MustWaitFor("CURVE handshake with the front end succeeded", startTimeout)
}

// TestCurveNothingReadableOnTheWire captures the loopback during requests
// that carry a known token, through Caddy with CURVE and, as the control
// that shows the capture works, through Caddy without it: the token must
// be in the plaintext capture and nowhere in the CURVE one.
func TestCurveNothingReadableOnTheWire(t *testing.T) {
	caddyBin(t)
	testworkerBin(t)
	for _, curve := range []bool{false, true} {
		name := map[bool]string{false: "plaintext-control", true: "curve"}[curve]
		t.Run(name, func(t *testing.T) {
			var c *caddy
			var w *process
			if curve {
				dir := t.TempDir()
				keyDir := filepath.Join(dir, "allowed")
				_ = os.Mkdir(keyDir, 0o755)
				base := filepath.Join(dir, "w")
				curveKeygen(t, base)
				allowKey(t, keyDir, base)
				c = startCurveCaddy(t, keyDir)
				w = startCurveWorker(t, "w", c.FrontEndControl(), curveFrontEndKey(t, c), base+".key_secret")
			} else {
				c = startCaddy(t, caddyOpts{Config: "caddyfiles/Caddyfile", HTTPS: true})
				w = startCurveWorker(t, "w", c.FrontEndControl(), "", "")
			}
			client := c.Client(modeH2)
			t.Cleanup(client.CloseIdleConnections)
			waitWorker(t, client, c.HTTPSURL("/ready"), "w", w, c.proc)

			token := newToken("wire-secret")
			capture, err := captureLoopback([]byte(token))
			if err != nil {
				if integrationRequired() {
					t.Fatalf("capturing the loopback: %v", err)
				}
				t.Skipf("capturing the loopback: %v", err)
			}
			hdr := http.Header{"Authorization": {"Bearer " + token}, "Cookie": {"session=" + token}}
			for i := range 5 {
				r := mustDo(t, client, http.MethodPost, c.HTTPSURL("/wire?t="+token), strings.NewReader("body "+token), hdr)
				if r.StatusCode != http.StatusOK || !bytes.Contains(r.Body, []byte(token)) {
					t.Fatalf("request %d: %d %q, want 200 echoing the token", i, r.StatusCode, r.Body)
				}
			}
			found, packets := capture.stop()
			t.Logf("%d loopback packets captured", packets)
			if !curve && found == 0 {
				t.Fatal("the plaintext control run shows no token on the wire: the capture does not work, so the CURVE run proves nothing")
			}
			if curve && found > 0 {
				t.Fatalf("the token appears in %d captured packets with CURVE on", found)
			}
		})
	}
}

// loopCapture reads every packet on the loopback interface with a raw
// AF_PACKET socket (root or CAP_NET_RAW), looking for needles as it goes.
type loopCapture struct {
	fd             int
	needle         []byte
	packets, found int // owned by run until done
	done           chan struct{}
	quit           chan struct{}
}

func htons(v uint16) uint16 { return binary.BigEndian.Uint16([]byte{byte(v), byte(v >> 8)}) }

func captureLoopback(needle []byte) (*loopCapture, error) {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		return nil, err
	}
	proto := htons(syscall.ETH_P_ALL)
	fd, err := syscall.Socket(syscall.AF_PACKET, syscall.SOCK_RAW, int(proto))
	if err != nil {
		return nil, fmt.Errorf("raw socket: %w", err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrLinklayer{Protocol: proto, Ifindex: lo.Index}); err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("binding to lo: %w", err)
	}
	tv := syscall.NsecToTimeval(int64(50 * time.Millisecond))
	if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		syscall.Close(fd)
		return nil, err
	}
	c := &loopCapture{fd: fd, needle: needle, done: make(chan struct{}), quit: make(chan struct{})}
	go c.run()
	return c, nil
}

func (c *loopCapture) run() {
	defer close(c.done)
	buf := make([]byte, 1<<16)
	for {
		select {
		case <-c.quit:
			return
		default:
		}
		n, _, err := syscall.Recvfrom(c.fd, buf, 0)
		if err != nil || n <= 0 {
			continue
		}
		c.packets++
		if bytes.Contains(buf[:n], c.needle) {
			c.found++
		}
	}
}

// stop ends the capture: how many packets held the needle, of how many.
func (c *loopCapture) stop() (found, packets int) {
	close(c.quit)
	<-c.done
	syscall.Close(c.fd)
	return c.found, c.packets
}

// withCurve writes a copy of a Caddyfile (relative to the repository) whose
// zmq block has curve on, allowing the keys in keyDir, and returns its path.
func withCurve(t testing.TB, config, keyDir string) string {
	t.Helper()
	data, err := os.ReadFile(repoPath(config))
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	i := strings.Index(s, "\tzmq {\n")
	if i < 0 {
		t.Fatalf("%s has no zmq block", config)
	}
	i += len("\tzmq {\n")
	s = s[:i] + "\t\tcurve {\n\t\t\tallow_dir " + keyDir + "\n\t\t}\n" + s[i:]
	out := filepath.Join(t.TempDir(), filepath.Base(config))
	if err := os.WriteFile(out, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

// curveWorkerKeys returns the flags of a worker named name: a key of its
// own, made and allowed on first use (Caddy reloaded), and the front end's
// public key.
func curveWorkerKeys(t testing.TB, c *caddy, keyDir string) func(name string) []string {
	serverKey := curveFrontEndKey(t, c)
	secrets := t.TempDir()
	return func(name string) []string {
		base := filepath.Join(secrets, name)
		curveKeygen(t, base)
		allowKey(t, keyDir, base)
		if err := c.Reload(nil); err != nil {
			t.Fatal(err)
		}
		return []string{"-curve-server-key", serverKey, "-curve-key", base + ".key_secret"}
	}
}

// TestCurveWorkersBind: the other topology, workers bind and Caddy
// connects (caddyfiles/workers-bind.Caddyfile with curve on). Caddy is
// still the CURVE server: the allowed binding worker serves every request,
// the one with an unknown key gets none.
func TestCurveWorkersBind(t *testing.T) {
	caddyBin(t)
	bin := testworkerBin(t)
	dir := t.TempDir()
	keyDir := filepath.Join(dir, "allowed")
	if err := os.Mkdir(keyDir, 0o755); err != nil {
		t.Fatal(err)
	}
	allowed, stranger := filepath.Join(dir, "allowed-worker"), filepath.Join(dir, "stranger")
	curveKeygen(t, allowed)
	strangerPub := curveKeygen(t, stranger)
	allowKey(t, keyDir, allowed)
	c := startCaddy(t, caddyOpts{Config: withCurve(t, "caddyfiles/workers-bind.Caddyfile", keyDir),
		Endpoints: []string{"WORKER1_REQUESTS", "WORKER1_REPLIES", "WORKER2_REQUESTS", "WORKER2_REPLIES"},
		Env:       map[string]string{"REPLY_TIMEOUT": "10s"}})
	serverKey := curveFrontEndKey(t, c)
	startBound := func(n int, name, key string) *process {
		fe := "bind:" + c.Endpoint(fmt.Sprintf("WORKER%d_REQUESTS", n)) + "," + c.Endpoint(fmt.Sprintf("WORKER%d_REPLIES", n))
		p := startProcess(t, name, command(t, bin, "-name", name, "-frontend", fe,
			"-curve-server-key", serverKey, "-curve-key", key+".key_secret"))
		p.MustWaitFor("bound; waiting for front ends", startTimeout)
		return p
	}
	w1 := startBound(1, "bound-allowed", allowed)
	w2 := startBound(2, "bound-stranger", stranger)
	client := c.Client(modeHTTP)
	t.Cleanup(client.CloseIdleConnections)
	waitWorker(t, client, c.HTTPURL("/ready"), "bound-allowed", w1, w2, c.proc)
	c.proc.MustWaitFor(strangerPub, startTimeout)
	for i := range 20 {
		h := rtSend(client, http.MethodPost, c.HTTPURL("/bind/{tok}"), "body {tok}", nil, 15*time.Second)
		if !h.ok() || h.Worker != "bound-allowed" {
			t.Fatalf("request %d: %v, want 200 from bound-allowed", i, h)
		}
	}
	if strings.Contains(w2.out.String(), "front end subscribed") || strings.Contains(w2.out.String(), "subscriptions changed") {
		t.Errorf("the refused binding worker was subscribed to:\n%s", w2.out.String())
	}
}
