package integration

// CURVE guards that hold for connections already made (bin/caddy, real
// workers): a worker id cannot be taken over by another allowed key, and a
// key removed by reload takes effect at once, without touching the worker
// that stays.

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zmqbridge/caddy-zmq/internal/zcert"
)

// TestCurveWorkerIDImpostor: caddyfiles/pinned.Caddyfile with CURVE, a
// pinned worker with its key serving a session, and an impostor: a second
// pinned worker, with another allowed key, that connects under the same
// worker id. Every request of the session is still answered by the worker
// (its PID): the impostor receives none of the REQs addressed to that id,
// and Caddy says it closed the impostor's control connection.
func TestCurveWorkerIDImpostor(t *testing.T) {
	caddyBin(t)
	pinnedWorkerBin(t)
	dir := t.TempDir()
	keyDir := filepath.Join(dir, "allowed")
	if err := os.Mkdir(keyDir, 0o755); err != nil {
		t.Fatal(err)
	}
	c := startCaddy(t, caddyOpts{Config: withCurve(t, "caddyfiles/pinned.Caddyfile", keyDir)})
	keys := curveWorkerKeys(t, c, keyDir)
	fe := c.FrontEndControl()
	legit := startPinnedWorker(t, "wk-legit", fe, keys("legit")...)
	client := &http.Client{Timeout: requestTimeout}
	t.Cleanup(client.CloseIdleConnections)
	waitPinnedWorkers(t, client, c.HTTPURL("/"), []string{"wk-legit"}, legit, c.proc)
	st, first, err := pinnedGet(client, c.HTTPURL("/"), "s1")
	if err != nil || st != http.StatusOK || first.PID != pidOf(legit) {
		t.Fatalf("first request of the session: %d %+v %v, want 200 from the worker (pid %d)", st, first, err, pidOf(legit))
	}

	impostorFlags := keys("impostor")
	impostor := startPinnedWorker(t, "wk-legit", fe, impostorFlags...)
	// Its handshake succeeds and it says HELLO, which Caddy never reads,
	// so it never answers: the impostor never counts its control
	// connection up, and Caddy closes it.
	impostor.MustWaitFor("control connection closed before the front end answered HELLO", startTimeout)
	for i := range 30 {
		st, a, err := pinnedGet(client, c.HTTPURL("/"), "s1")
		if err != nil || st != http.StatusOK {
			t.Fatalf("request %d of the session: %d %v", i, st, err)
		}
		if a.PID != pidOf(legit) {
			t.Fatalf("request %d of the session answered by pid %d, want the worker's %d (impostor: %d)", i, a.PID, pidOf(legit), pidOf(impostor))
		}
	}
	c.proc.MustWaitFor("closed an authenticated control connection that sent nothing", startTimeout)
	// The log names the impostor's key among the candidates (libzmq does
	// not say which key a connection it does not read has).
	cert, err := os.ReadFile(strings.TrimSuffix(impostorFlags[len(impostorFlags)-1], "_secret"))
	if err != nil {
		t.Fatal(err)
	}
	zc, err := zcert.Parse(cert)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(c.proc.out.String(), zc.Public) {
		t.Errorf("the log does not name the impostor's key %s:\n%s", zc.Public, tail(c.proc.out.String(), 3000))
	}
	if strings.Contains(impostor.out.String(), "control channel connected") {
		t.Errorf("the impostor counted its control connection up:\n%s", impostor.out.String())
	}
}

// TestCurveKeyRemovalUnderLoad: two allowed workers under load. A reload
// that removes one worker's key: no request fails, none that starts after
// the reload is answered by the removed worker, and the log says so once.
func TestCurveKeyRemovalUnderLoad(t *testing.T) {
	dir, keyDir := curveTestDir(t)
	staying, removed := filepath.Join(dir, "staying"), filepath.Join(dir, "removed")
	curveKeygen(t, staying)
	removedPub := curveKeygen(t, removed)
	allowKey(t, keyDir, staying)
	allowKey(t, keyDir, removed)
	c := startCurveCaddy(t, keyDir)
	serverKey := curveFrontEndKey(t, c)
	fe := c.FrontEndControl()
	stayW := startCurveWorker(t, "staying", fe, serverKey, staying+".key_secret")
	remW := startCurveWorker(t, "removed", fe, serverKey, removed+".key_secret")
	client := c.Client(modeH2)
	t.Cleanup(client.CloseIdleConnections)
	waitWorker(t, client, c.HTTPSURL("/ready"), "staying", stayW, c.proc)
	waitWorker(t, client, c.HTTPSURL("/ready"), "removed", remW, c.proc)

	const clients = 4
	cls := make([]*http.Client, clients)
	for i := range cls {
		cls[i] = c.Client(modeH2)
		t.Cleanup(cls[i].CloseIdleConnections)
	}
	l := rtStartLoad(clients, 2*time.Minute, func(i, n int) rtHit {
		return sendThroughReloads(cls[i], c.HTTPSURL("/load/{tok}"))
	})
	defer l.stop()
	answeredBy := func(w string, after time.Time) func([]rtHit) error {
		return func(hits []rtHit) error {
			for _, h := range hits {
				if h.ok() && h.Worker == w && h.Start.After(after) {
					return nil
				}
			}
			return fmt.Errorf("no answer from %s yet", w)
		}
	}
	l.waitUntil(t, startTimeout, "both workers answer", func(hits []rtHit) error {
		return errors.Join(answeredBy("staying", time.Time{})(hits), answeredBy("removed", time.Time{})(hits))
	})
	if err := os.Remove(filepath.Join(keyDir, "removed.key")); err != nil {
		t.Fatal(err)
	}
	if err := c.Reload(nil); err != nil {
		t.Fatal(err)
	}
	reloaded := time.Now()
	l.waitUntil(t, 30*time.Second, "load after the removal", func(hits []rtHit) error {
		n := 0
		for _, h := range hits {
			if h.Start.After(reloaded) {
				n++
			}
		}
		if n < 100 {
			return fmt.Errorf("%d requests since the removal", n)
		}
		return nil
	})
	hits := l.stop()
	// A request Caddy's HTTP side refused before any response (its
	// listener changing hands at the reload) never reached the bridge:
	// counted apart, as this test is about the workers.
	var reached []rtHit
	refused := 0
	for _, h := range hits {
		if h.Err != nil && h.Status == 0 && unprocessed(h.Err) {
			refused++
			t.Logf("refused by the HTTP side, not counted: %v", h.Err)
			continue
		}
		reached = append(reached, h)
	}
	rtReportFailures(t, "key removal by reload", len(reached), rtFailures(reached))
	var slowest rtHit
	for _, h := range hits {
		if h.Dur > slowest.Dur {
			slowest = h
		}
	}
	t.Logf("%d requests, slowest %v (started %v after the removal, worker %q)", len(hits), slowest.Dur, slowest.Start.Sub(reloaded), slowest.Worker)
	for _, h := range hits {
		if h.Start.After(reloaded) && h.Worker == "removed" {
			t.Fatalf("a request started %v after the removal was answered by the removed worker", h.Start.Sub(reloaded))
		}
	}
	out := c.proc.out.String()
	if n := strings.Count(out, "worker keys removed from the allow-list"); n != 1 {
		t.Errorf("the removal was logged %d times, want once", n)
	}
	if !strings.Contains(out, removedPub) {
		t.Error("the removal's log line does not name the key")
	}
}

// TestCurveRefusalLoggedOnceAcrossReloads: a worker whose key is unknown
// is logged once; the same key refused after each of three reloads (a new
// process each time) is not logged again.
func TestCurveRefusalLoggedOnceAcrossReloads(t *testing.T) {
	dir, keyDir := curveTestDir(t)
	stranger, other := filepath.Join(dir, "stranger"), filepath.Join(dir, "other")
	strangerPub := curveKeygen(t, stranger)
	curveKeygen(t, other)
	c := startCurveCaddy(t, keyDir)
	serverKey := curveFrontEndKey(t, c)
	startCurveWorker(t, "stranger", c.FrontEndControl(), serverKey, stranger+".key_secret").
		MustWaitFor("CURVE handshake with the front end failed", startTimeout)
	c.proc.MustWaitFor(strangerPub, startTimeout)
	for i := range 3 {
		if i == 1 {
			allowKey(t, keyDir, other) // a reload that changes the list
		}
		if err := c.Reload(nil); err != nil {
			t.Fatal(err)
		}
		// The same key, refused again after the reload.
		startCurveWorker(t, fmt.Sprintf("stranger-%d", i), c.FrontEndControl(), serverKey, stranger+".key_secret").
			MustWaitFor("CURVE handshake with the front end failed", startTimeout)
	}
	if n := strings.Count(c.proc.out.String(), `"public_key":"`+strangerPub+`"`); n != 1 {
		t.Errorf("the unknown key was logged %d times across three reloads, want once", n)
	}
}

// TestCurveOversizedFrameNamed: an allowed worker that also sends a reply
// frame over the reply socket's cap (max_buffered_reply plus slack) on a
// socket of its own: libzmq drops that connection before taking the frame
// in (Caddy's RSS does not grow by it), and Caddy's log names the worker,
// its key and the cap, while the worker goes on serving.
func TestCurveOversizedFrameNamed(t *testing.T) {
	c, serverKey, rogue := startCurveCaddyAllowing(t, "rogue")
	client := c.Client(modeH2)
	t.Cleanup(client.CloseIdleConnections)
	rss := startRSS(t, c.proc)
	const frame = 96 << 20 // over the default cap, 64 MiB + 64 KiB
	w := startProcess(t, "rogue", command(t, testworkerBin(t), "-name", "rogue", "-frontend", c.FrontEndControl(),
		"-curve-server-key", serverKey, "-curve-key", rogue.secretFile, "-rogue-frame", fmt.Sprint(frame)))
	waitWorker(t, client, c.HTTPSURL("/ready"), "rogue", w, c.proc)
	w.MustWaitFor("ROGUE FRAME SENT", startTimeout)
	c.proc.MustWaitFor("closed a worker's reply connection while the worker stays on the control channel", startTimeout)
	out := c.proc.out.String()
	for _, want := range []string{`"worker_key":"` + rogue.public + `"`, `"max_frame_bytes":67174400`, `"socket":"reply"`} {
		if !strings.Contains(out, want) {
			t.Errorf("the log line lacks %s:\n%s", want, out)
		}
	}
	rss.Stop()
	rss.Check("a frame over the cap", 32<<20)
	for i := range 5 {
		r := mustDo(t, client, http.MethodGet, c.HTTPSURL(fmt.Sprintf("/after/%d", i)), nil, nil)
		if r.StatusCode != http.StatusOK {
			t.Fatalf("request %d after the rogue frame: %d", i, r.StatusCode)
		}
	}
}

// sendThroughReloads is rtSendRetry for a GET sent while Caddy reloads:
// the HTTP side may refuse it unprocessed (GOAWAY from the old server, then
// refused dials for a moment as the listener is handed over), which says
// nothing about the workers. A request the HTTP side dropped before any
// response is retried, polling, for up to 5 s.
func sendThroughReloads(client *http.Client, url string) rtHit {
	h := rtSendRetry(client, url, nil, requestTimeout)
	for deadline := time.Now().Add(5 * time.Second); h.Err != nil && time.Now().Before(deadline); {
		if !unprocessed(h.Err) {
			break
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
		h = rtSend(client, http.MethodGet, url, "", nil, requestTimeout)
		h.Retried = true
	}
	return h
}

// unprocessed reports an error of Caddy's HTTP side that leaves a GET
// unanswered and unprocessed while it reloads: a refused dial, a reset,
// GOAWAY or EOF before any response.
func unprocessed(err error) bool {
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) {
		return true
	}
	for _, s := range []string{"connection refused", "connection reset", "GOAWAY", "EOF"} {
		if strings.Contains(err.Error(), s) {
			return true
		}
	}
	return false
}
