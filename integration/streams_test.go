package integration

// "Streams both ways": Server-Sent Events event by event (Go client, curl,
// headless Chromium), one broadcast to many listeners, 1 GiB downloads and
// uploads with bounded memory, a slow client slowing the worker down,
// Mongrel2 temp-file uploads, and disconnects reaching the right worker.
// All through the built bin/caddy with caddyfiles/streams.Caddyfile (or
// mongrel2-uploads.Caddyfile) and real worker processes. TestCancelBeforeAck
// is an opt-in reproduction of a known bug (see there).
//
// Besides bin/caddy and bin/echo-worker they need: the chat example
// (bin/chat-worker, or built here with go build), curl, ss (iproute2),
// python3-zmq, and for TestSSEBrowser Chromium (skipped without it).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// rssLimit bounds the growth of a process's memory while it moves 1 GiB.
const rssLimit = 64 * sMiB

// chatPageCheck accepts the chat worker's page.
func chatPageCheck(b []byte) error {
	if !strings.Contains(string(b), "workerkit chat") {
		return fmt.Errorf("not the chat page: %q", tail(string(b), 200))
	}
	return nil
}

// startChat runs a streams Caddy and one chat worker and waits until the
// page answers through Caddy.
func startChat(t *testing.T, https bool) (*caddy, *process) {
	t.Helper()
	bin := chatWorkerBin(t) // before Caddy: building may take a while
	c := startStreamsCaddy(t, https, nil)
	chat := startChatWorker(t, c, bin, "chat")
	waitControlWorkers(t, c, 1, chat)
	client := c.Client(modeHTTP)
	defer client.CloseIdleConnections()
	waitStatusOK(t, client, c.HTTPURL("/"), chatPageCheck, c.proc, chat)
	return c, chat
}

// postWant sends body to url and wants status.
func postWant(t *testing.T, client *http.Client, url, body string, status int) {
	t.Helper()
	r := mustDo(t, client, http.MethodPost, url, strings.NewReader(body), http.Header{"Content-Type": {"text/plain"}})
	if r.StatusCode != status {
		t.Fatalf("POST %s: %s, want %d; %q", url, r.Status, status, tail(string(r.Body), 300))
	}
}

// ---------------------------------------------------------------------------
// 1. Server-Sent Events, event by event.

// TestSSEEventByEvent: the chat worker's /events through Caddy over
// verified HTTPS (HTTP/2 and HTTP/1.1 Go clients) and with curl -N: each
// message posted to /send reaches the listener while the stream stays open,
// before the next one is sent.
func TestSSEEventByEvent(t *testing.T) {
	c, chat := startChat(t, true)
	sender := c.Client(modeH2)
	defer sender.CloseIdleConnections()

	// listen checks three events, one at a time, on an open stream.
	listen := func(t *testing.T, name string, body io.Reader, stillOpen func() bool) {
		r := readSSE(body)
		if _, err := r.next(lineTimeout, isLine(": joined")); err != nil {
			t.Fatalf("%s: the stream did not open: %v", name, err)
		}
		for i := 1; i <= 3; i++ {
			msg := newToken(name + "-event")
			sent := time.Now()
			postWant(t, sender, c.HTTPSURL("/send"), msg, http.StatusNoContent)
			l, err := r.next(lineTimeout, func(s string) bool { return strings.HasPrefix(s, "data: ") })
			if err != nil {
				t.Fatalf("%s: event %d: %v", name, i, err)
			}
			if l.Text != "data: "+msg {
				t.Fatalf("%s: event %d is %q, want %q (out of order or lost)", name, i, l.Text, "data: "+msg)
			}
			if !r.open() || !stillOpen() {
				t.Fatalf("%s: the stream ended after event %d: %v", name, i, r.err)
			}
			t.Logf("%s: event %d arrived %v after the POST started; stream still open", name, i, l.At.Sub(sent).Round(time.Microsecond))
		}
	}

	for _, m := range []clientMode{modeH2, modeHTTPS} {
		t.Run("Go client "+m.Name, func(t *testing.T) {
			client := newClient(m, c.roots)
			client.Timeout = 0 // the stream lasts as long as the test wants
			defer client.CloseIdleConnections()
			ctx, cancel := context.WithTimeout(context.Background(), 2*requestTimeout)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.HTTPSURL("/events"), nil)
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
				t.Fatalf("GET /events: %s, Content-Type %q", resp.Status, resp.Header.Get("Content-Type"))
			}
			if m.H2 && resp.ProtoMajor != 2 {
				t.Errorf("GET /events: %s, want HTTP/2", resp.Proto)
			}
			listen(t, m.Name, resp.Body, func() bool { return ctx.Err() == nil })
		})
	}

	t.Run("curl -N", func(t *testing.T) {
		curl := needFile(t, "/usr/bin/curl", "run make deps (curl)")
		root := filepath.Join(t.TempDir(), "root.pem")
		if err := os.WriteFile(root, fetchRootPEM(t, c), 0o644); err != nil {
			t.Fatal(err)
		}
		host := fmt.Sprintf("localhost:%d", c.HTTPSPort)
		cmd := exec.Command(curl, "-sS", "-N", "--cacert", root, "--resolve", host+":127.0.0.1",
			"https://"+host+"/events")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		t.Cleanup(func() {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		})
		listen(t, "curl", stdout, func() bool {
			select {
			case <-exited:
				t.Logf("curl exited: %s", stderr.String())
				return false
			default:
				return true
			}
		})
	})
	if t.Failed() {
		t.Logf("chat worker output:\n%s", tail(chat.out.String(), 4000))
	}
}

// fetchRootPEM returns the PEM of Caddy's local CA root (for curl).
func fetchRootPEM(t *testing.T, c *caddy) []byte {
	t.Helper()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + c.Admin + "/pki/ca/local")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ca struct {
		RootCertificate string `json:"root_certificate"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&ca); err != nil || ca.RootCertificate == "" {
		t.Fatalf("GET /pki/ca/local: %s, %v", resp.Status, err)
	}
	return []byte(ca.RootCertificate)
}

// TestSSEBrowser: headless Chromium opens the chat page (an EventSource on
// /events that appends every message to the DOM) through Caddy over plain
// HTTP (so that the browser needs no trust in Caddy's private CA); three
// messages posted at intervals appear in the page one by one, each before
// the next is sent, on one EventSource connection that never reconnects.
func TestSSEBrowser(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Skipf("%s is not installed (Debian package chromium): skipping the browser test", chromiumPath)
	}
	c, _ := startChat(t, false)
	sender := c.Client(modeHTTP)
	defer sender.CloseIdleConnections()

	page := c.HTTPURL("/")
	b := startBrowser(t, page)

	// The page loaded and its EventSource is open.
	var state struct {
		Ready string `json:"ready"`
		ES    int    `json:"es"`
		State string `json:"state"`
	}
	err := poll(startTimeout, b.exited, func() error {
		if err := b.eval(`({ready: document.readyState, es: (typeof es === "object" ? es.readyState : -1),
			state: (document.getElementById("state") || {}).textContent || ""})`, &state); err != nil {
			return err
		}
		if state.Ready != "complete" || state.ES != 1 || state.State != "connected" {
			return fmt.Errorf("page not connected yet: %+v", state)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Record when each message arrives, and any error (a reconnect).
	if err := b.eval(`(() => {
		window.__got = []; window.__errors = 0;
		es.addEventListener("message", (e) => window.__got.push({data: e.data, at: Date.now()}));
		es.addEventListener("error", () => window.__errors++);
		return true;
	})()`, nil); err != nil {
		t.Fatal(err)
	}

	type seen struct {
		Log []string `json:"log"`
		Got []struct {
			Data string  `json:"data"`
			At   float64 `json:"at"`
		} `json:"got"`
		Errors int `json:"errors"`
		ES     int `json:"es"`
	}
	const probe = `({log: Array.from(document.querySelectorAll("#log div"), (d) => d.textContent),
		got: window.__got, errors: window.__errors, es: es.readyState})`
	var sent []string
	for i := 1; i <= 3; i++ {
		msg := newToken(fmt.Sprintf("browser-%d", i))
		sentAt := time.Now()
		postWant(t, sender, c.HTTPURL("/send"), msg, http.StatusNoContent)
		sent = append(sent, msg)
		var s seen
		err := poll(lineTimeout, b.exited, func() error {
			if err := b.eval(probe, &s); err != nil {
				return err
			}
			if len(s.Log) < i {
				return fmt.Errorf("the page shows %d messages, want %d: %q", len(s.Log), i, s.Log)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if !slices.Equal(s.Log, sent) {
			t.Fatalf("after message %d the page shows %q, want %q", i, s.Log, sent)
		}
		if s.ES != 1 || s.Errors != 0 {
			t.Fatalf("after message %d: EventSource readyState %d, %d errors (it reconnected)", i, s.ES, s.Errors)
		}
		if len(s.Got) != i || s.Got[i-1].Data != msg {
			t.Fatalf("after message %d the EventSource delivered %+v", i, s.Got)
		}
		at := time.UnixMilli(int64(s.Got[i-1].At))
		t.Logf("message %d appeared in the page %v after the POST started (browser clock, ms resolution)",
			i, at.Sub(sentAt).Round(time.Millisecond))
		// At intervals: the next message goes out only now, once this one
		// is on the page; give the stream a moment of silence in between,
		// so that each event travels on its own.
		time.Sleep(200 * time.Millisecond)
	}
}

// ---------------------------------------------------------------------------
// 5. One message, many clients.

// TestChatFanOut: 100 listeners on the chat worker's /events through
// Caddy, each on its own HTTP/1.1 connection; one POST /send reaches all of
// them (the worker sends one reply frame per 128 listeners).
func TestChatFanOut(t *testing.T) {
	const listeners = 100
	c, _ := startChat(t, false)
	sender := c.Client(modeHTTP)
	defer sender.CloseIdleConnections()

	ctx, cancel := context.WithTimeout(context.Background(), 4*requestTimeout)
	defer cancel()
	readers := make([]*sseReader, listeners)
	var wg sync.WaitGroup
	errs := make(chan error, listeners)
	for i := range listeners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := newClient(modeHTTP, nil) // one connection per listener
			client.Timeout = 0
			t.Cleanup(client.CloseIdleConnections)
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.HTTPURL("/events"), nil)
			resp, err := client.Do(req)
			if err != nil {
				errs <- fmt.Errorf("listener %d: %v", i, err)
				return
			}
			t.Cleanup(func() { resp.Body.Close() })
			if resp.StatusCode != http.StatusOK {
				errs <- fmt.Errorf("listener %d: %s", i, resp.Status)
				return
			}
			r := readSSE(resp.Body)
			if _, err := r.next(lineTimeout, isLine(": joined")); err != nil {
				errs <- fmt.Errorf("listener %d: %v", i, err)
				return
			}
			readers[i] = r
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}

	for round := 1; round <= 2; round++ {
		msg := newToken(fmt.Sprintf("fanout-%d", round))
		arrived := make([]time.Time, listeners)
		start := time.Now()
		postWant(t, sender, c.HTTPURL("/send"), msg, http.StatusNoContent)
		posted := time.Since(start)
		var wg sync.WaitGroup
		var mu sync.Mutex
		var missing []string
		for i, r := range readers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				l, err := r.next(lineTimeout, func(s string) bool { return strings.HasPrefix(s, "data: ") })
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err != nil:
					missing = append(missing, fmt.Sprintf("listener %d: %v", i, err))
				case l.Text != "data: "+msg:
					missing = append(missing, fmt.Sprintf("listener %d: got %q, want %q", i, l.Text, "data: "+msg))
				default:
					arrived[i] = l.At
				}
			}()
		}
		wg.Wait()
		if len(missing) > 0 {
			t.Fatalf("round %d: %d of %d listeners did not get the message:\n%s", round, len(missing), listeners, strings.Join(missing, "\n"))
		}
		d := make([]time.Duration, listeners)
		for i, at := range arrived {
			d[i] = at.Sub(start)
		}
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		t.Logf("round %d: all %d listeners got the message; from the start of the POST: first %v, median %v, last %v (the POST itself took %v)",
			round, listeners, d[0].Round(time.Microsecond), d[listeners/2].Round(time.Microsecond),
			d[listeners-1].Round(time.Microsecond), posted.Round(time.Microsecond))
	}
}

// ---------------------------------------------------------------------------
// 2. Large responses with bounded memory.

// startEchoStreams runs a streams Caddy (plain HTTP) and one echo worker on
// its control channel.
func startEchoStreams(t *testing.T) (*caddy, *process) {
	t.Helper()
	return startEchoStreamsEnv(t, nil)
}

// startEchoStreamsEnv is startEchoStreams with env for streams.Caddyfile.
func startEchoStreamsEnv(t *testing.T, env map[string]string) (*caddy, *process) {
	t.Helper()
	c := startStreamsCaddy(t, false, env)
	w := startEchoWorker(t, c, "echo")
	waitControlWorkers(t, c, 1, w)
	client := c.Client(modeHTTP)
	defer client.CloseIdleConnections()
	waitStatusOK(t, client, c.HTTPURL("/big?bytes=10"), func(b []byte) error {
		if string(b) != bigPattern[:10] {
			return fmt.Errorf("GET /big?bytes=10: %q", b)
		}
		return nil
	}, c.proc, w)
	return c, w
}

// downloadBig reads GET url to the end, checking the pattern; it returns the
// byte count.
func downloadBig(t *testing.T, client *http.Client, url string) (int64, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1000))
		t.Fatalf("GET %s: %s %q", url, resp.Status, b)
	}
	pc := newPatternChecker()
	n, err := io.CopyBuffer(pc, resp.Body, make([]byte, 256*sKiB))
	d := time.Since(start)
	if err != nil {
		t.Fatalf("GET %s: after %d bytes: %v", url, n, err)
	}
	if pc.bad >= 0 {
		t.Fatalf("GET %s: byte %d is not the pattern", url, pc.bad)
	}
	if cl := resp.ContentLength; cl >= 0 && cl != n {
		t.Fatalf("GET %s: Content-Length %d, read %d", url, cl, n)
	}
	return n, d
}

// TestLargeDownload: 1 GiB from echo /big through Caddy (control channel,
// 1 MiB reply window): all of it arrives, in order, while neither Caddy nor
// the worker grows by more than 64 MiB. Then a slow client (10 MB/s with a
// small socket buffer) holds the worker back: what the worker sends stays
// within the window of what Caddy wrote to the client, and when the client
// leaves the worker has produced little more than the client read.
func TestLargeDownload(t *testing.T) {
	c, w := startEchoStreams(t)
	client := bigClient()
	defer client.CloseIdleConnections()
	// Warm-up: buffers and pools in every process at their working size.
	downloadBig(t, client, c.HTTPURL(fmt.Sprintf("/big?bytes=%d", 32*sMiB)))

	t.Run("1 GiB", func(t *testing.T) {
		rss := startRSS(t, c.proc, w)
		defer rss.Stop()
		n, d := downloadBig(t, client, c.HTTPURL(fmt.Sprintf("/big?bytes=%d", sGiB)))
		if n != sGiB {
			t.Fatalf("read %d bytes, want %d", n, sGiB)
		}
		t.Logf("1 GiB download: %v, %.0f MB/s", d.Round(time.Millisecond), mbPerS(n, d))
		rss.Check("1 GiB download", rssLimit)
	})

	t.Run("slow client", func(t *testing.T) {
		slowClientDownload(t, c, w)
	})
}

// TestAbandonedTransfersMemory: clients that leave large downloads and
// uploads in bursts must not leave Caddy or the worker holding memory.
// Every such transfer had frames in flight (up to the credit window) when
// its client went. What used to stay resident: upload chunks and reply
// frames from glibc's heap (freed on libzmq's I/O thread, kept by the arenas
// of the threads that allocated them) and an ended request's queued frames
// waiting for the garbage collector; zmqio.CBuf's bounded block cache, the
// trim after kept parts are freed, and the queue released at unregister
// answer them (docs/performance.md has the figures).
func TestAbandonedTransfersMemory(t *testing.T) {
	const (
		bursts    = 12 // downloads and uploads alternate
		perBurst  = 100
		readFirst = 1 * sMiB // a download is left after this much
		sendFor   = 50 * time.Millisecond
	)
	// The default window (streams.Caddyfile has 1 MiB): 4 MiB in flight
	// per transfer, 400 MiB for a burst.
	c, w := startEchoStreamsEnv(t, map[string]string{"REPLY_WINDOW": "4MiB"})
	client := bigClient()
	defer client.CloseIdleConnections()
	// Warm-up: pools and the Go heap at their working size.
	downloadBig(t, client, c.HTTPURL(fmt.Sprintf("/big?bytes=%d", 32*sMiB)))
	uploadBig(t, client, c.HTTPURL("/upload"), 32*sMiB, false)
	base := map[*process]int64{}
	for _, p := range []*process{c.proc, w} {
		rss, err := vmRSS(pidOf(p))
		if err != nil {
			t.Fatal(err)
		}
		base[p] = rss
	}

	leave := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	download := func() {
		resp, err := leave.Get(c.HTTPURL(fmt.Sprintf("/big?bytes=%d", sGiB)))
		if err != nil {
			return
		}
		_, _ = io.CopyN(io.Discard, resp.Body, readFirst)
		resp.Body.Close()
	}
	var completed atomic.Int64
	upload := func() {
		ctx, cancel := context.WithTimeout(context.Background(), sendFor)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, c.HTTPURL("/upload"), newUploadSource(sGiB))
		req.ContentLength = sGiB
		if resp, err := leave.Do(req); err == nil {
			if resp.StatusCode == http.StatusOK {
				completed.Add(1)
			}
			resp.Body.Close()
		}
	}
	for b := range bursts {
		transfer, what := download, "downloads"
		if b%2 == 1 {
			transfer, what = upload, "uploads"
		}
		var wg sync.WaitGroup
		for range perBurst {
			wg.Go(transfer)
		}
		wg.Wait()
		t.Logf("burst %d (%s): Caddy %s, worker %s", b+1, what, rssOf(c.proc), rssOf(w))
	}
	if n := completed.Load(); n > 0 {
		t.Fatalf("%d uploads of 1 GiB completed within %v: the clients did not leave early", n, sendFor)
	}
	// Both still serve, and what the abandoned transfers held is released
	// (asynchronously: frames in flight drain, Go returns freed pages).
	downloadBig(t, client, c.HTTPURL(fmt.Sprintf("/big?bytes=%d", 4*sMiB)))
	procs := []*process{c.proc, w}
	err := poll(15*time.Second, anyExited(procs), func() error {
		var over []string
		for _, p := range procs {
			rss, err := vmRSS(pidOf(p))
			if err != nil {
				return err
			}
			if grew := rss - base[p]; grew > rssLimit {
				over = append(over, fmt.Sprintf("%s grew by %s (baseline %s, now %s)", p.name, fmtMiB(grew), fmtMiB(base[p]), fmtMiB(rss)))
			}
		}
		if len(over) > 0 {
			return errors.New(strings.Join(over, "; "))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("after %d bursts of %d abandoned transfers, more than %s stays resident: %v",
			bursts, perBurst, fmtMiB(rssLimit), err)
	}
	t.Logf("after the bursts: Caddy %s (baseline %s), worker %s (baseline %s)",
		rssOf(c.proc), fmtMiB(base[c.proc]), rssOf(w), fmtMiB(base[w]))
}

// rssOf formats a process's resident set for a log line.
func rssOf(p *process) string {
	rss, err := vmRSS(pidOf(p))
	if err != nil {
		return err.Error()
	}
	return fmtMiB(rss)
}

func slowClientDownload(t *testing.T, c *caddy, w *process) {
	const (
		total    = sGiB
		rate     = 10e6 // bytes per second
		slowFor  = 3 * time.Second
		window   = 1 * sMiB // REPLY_WINDOW in streams.Caddyfile
		rcvbuf   = 64 * sKiB
		readSize = 16 * sKiB
	)
	client := smallBufferClient(rcvbuf)
	defer client.CloseIdleConnections()

	// The worker's connection to Caddy's reply socket: all it sends there.
	workerFilter := fmt.Sprintf("( dport = :%s )", portOf(c.Endpoint("ZMQ_REPLIES")))
	workerBase, nconn, err := tcpWritten(workerFilter)
	if err != nil {
		if integrationRequired() {
			t.Fatalf("cannot measure TCP counters with ss (iproute2): %v", err)
		}
		t.Skipf("cannot measure TCP counters with ss (iproute2): %v", err)
	}
	if nconn != 1 {
		t.Fatalf("%d connections match %s, want the worker's one", nconn, workerFilter)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var local string
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { local = i.Conn.LocalAddr().String() }}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), http.MethodGet,
		c.HTTPURL(fmt.Sprintf("/big?bytes=%d", total)), nil)
	rss := startRSS(t, c.proc, w)
	defer rss.Stop()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, clientPort, _ := net.SplitHostPort(local)
	// Caddy's end of the client's connection.
	caddyFilter := fmt.Sprintf("( sport = :%d and dport = :%s )", c.HTTPPort, clientPort)

	pc := newPatternChecker()
	buf := make([]byte, readSize)
	var read int64
	var maxAhead, maxUncredited int64 // worker wrote - client read; worker wrote - Caddy wrote to the client
	var samples int
	start := time.Now()
	nextSample := start
	for time.Since(start) < slowFor {
		n, err := resp.Body.Read(buf)
		pc.Write(buf[:n])
		read += int64(n)
		if err != nil {
			t.Fatalf("slow read after %d bytes: %v", read, err)
		}
		if now := time.Now(); now.After(nextSample) {
			nextSample = now.Add(100 * time.Millisecond)
			ws, _, err1 := tcpWritten(workerFilter)
			cs, _, err2 := tcpWritten(caddyFilter)
			if err1 == nil && err2 == nil {
				samples++
				workerSent := ws - workerBase
				maxAhead = max(maxAhead, workerSent-read)
				maxUncredited = max(maxUncredited, workerSent-cs)
			}
		}
		// Pace the reads: rate limiting, not synchronisation.
		if ahead := time.Duration(float64(read)/rate*float64(time.Second)) - time.Since(start); ahead > 0 {
			time.Sleep(ahead)
		}
	}
	elapsed := time.Since(start)
	if pc.bad >= 0 {
		t.Fatalf("byte %d is not the pattern", pc.bad)
	}
	t.Logf("slow client: read %s in %v (%.1f MB/s); %d samples: worker ahead of the client by at most %s, ahead of what Caddy wrote to the client by at most %s (window %s)",
		fmtMiB(read), elapsed.Round(time.Millisecond), mbPerS(read, elapsed), samples, fmtMiB(maxAhead), fmtMiB(maxUncredited), fmtMiB(window))
	rss.Check("slow client", rssLimit)

	// The client leaves: the worker stops, having produced little more
	// than the client read.
	cancel()
	resp.Body.Close()
	if err := w.WaitFor("big: stopped with", lineTimeout); err != nil {
		t.Fatalf("the worker did not stop after the client left: %v", err)
	}
	m := stoppedLeft.FindAllStringSubmatch(w.out.String(), -1)
	if len(m) == 0 {
		t.Fatalf("no \"big: stopped with N bytes left\" line in the worker's output")
	}
	left, _ := strconv.ParseInt(m[len(m)-1][1], 10, 64)
	produced := total - left
	t.Logf("slow client: when it left, the worker had produced %s of %s (the client read %s, %s more)",
		fmtMiB(produced), fmtMiB(total), fmtMiB(read), fmtMiB(produced-read))

	// Bounds: the reply window, Caddy's socket send buffer toward the client
	// (autotuned up to net.ipv4.tcp_wmem's maximum, 4 MiB by default) and
	// the client's receive buffer. Without flow control the worker would
	// have produced hundreds of megabytes by now.
	const slack = 16 * sMiB
	if samples == 0 {
		t.Errorf("no TCP samples during the slow phase")
	}
	if maxUncredited > 2*window+256*sKiB {
		t.Errorf("the worker got %s ahead of what Caddy wrote to the client; the credit window is %s", fmtMiB(maxUncredited), fmtMiB(window))
	}
	if maxAhead > slack {
		t.Errorf("the worker got %s ahead of the client, more than %s", fmtMiB(maxAhead), fmtMiB(slack))
	}
	if produced-read > slack {
		t.Errorf("the worker produced %s more than the client read, more than %s", fmtMiB(produced-read), fmtMiB(slack))
	}
}

// ---------------------------------------------------------------------------
// 3. Large uploads with bounded memory.

type uploadReply struct {
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
}

// uploadBig POSTs n generated bytes to url (chunked if chunked) and returns
// the reply, the digest of what was sent and the time it took.
func uploadBig(t *testing.T, client *http.Client, url string, n int64, chunked bool) (uploadReply, string, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	src := newUploadSource(n)
	var body io.Reader = src
	if chunked {
		body = hideLength{src}
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, body)
	req.Header.Set("Content-Type", "application/octet-stream")
	if chunked {
		req.ContentLength = -1
	} else {
		req.ContentLength = n
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("POST %s (%d bytes, chunked %v): %v", url, n, chunked, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	d := time.Since(start)
	if err != nil {
		t.Fatalf("POST %s: reading the reply: %v", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s (%d bytes): %s %q", url, n, resp.Status, tail(string(b), 500))
	}
	var r uploadReply
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("POST %s: not an upload reply: %q", url, tail(string(b), 500))
	}
	if src.off != n {
		t.Fatalf("POST %s: the client sent %d of %d bytes", url, src.off, n)
	}
	return r, src.Sum(), d
}

// checkStreamedUploads skips the test when the worker side of streamed
// uploads (workerkit reading BODY messages) is not there yet, after making
// sure that this is why a streamed body arrives empty: inline bodies
// (<= 64 KiB) arrive whole, and a larger body reaches the handler with the
// content-length Caddy announced and no bytes.
func checkStreamedUploads(t *testing.T, client *http.Client, c *caddy) {
	t.Helper()
	small, sum, _ := uploadBig(t, client, c.HTTPURL("/upload"), 32*sKiB, false)
	if small.Bytes != 32*sKiB || small.SHA256 != sum {
		t.Fatalf("an inline 32 KiB upload arrived as %d bytes, sha256 %s (want %s)", small.Bytes, small.SHA256, sum)
	}
	const n = 256 * sKiB
	got, sum, _ := uploadBig(t, client, c.HTTPURL("/upload"), n, false)
	if got.Bytes == n && got.SHA256 == sum {
		return // streamed uploads work
	}
	if got.Bytes != 0 {
		t.Fatalf("a streamed %d-byte upload arrived as %d bytes, sha256 %s (want %s)", n, got.Bytes, got.SHA256, sum)
	}
	// Empty: what did the handler see?
	body, _ := io.ReadAll(newUploadSource(n))
	r := mustDo(t, client, http.MethodPost, c.HTTPURL("/anything"), bytes.NewReader(body), nil)
	var e struct {
		Header        http.Header `json:"header"`
		ContentLength int64       `json:"content_length"`
		Body          string      `json:"body"`
	}
	if err := json.Unmarshal(r.Body, &e); err != nil {
		t.Fatalf("POST /anything: %s %q", r.Status, tail(string(r.Body), 300))
	}
	if e.Header.Get("Content-Length") == strconv.Itoa(n) && e.ContentLength == 0 && e.Body == "" {
		t.Skipf("workerkit streamed uploads not available: a %d-byte body, streamed by Caddy (ZMQX_BODY: stream, BODY/BODYEND on the control channel), "+
			"reaches the handler as content-length %s with r.ContentLength 0 and an empty r.Body, while a 32 KiB inline body arrives whole",
			n, e.Header.Get("Content-Length"))
	}
	t.Fatalf("a streamed %d-byte upload arrived empty, and the handler saw content-length %q, r.ContentLength %d, %d body bytes",
		n, e.Header.Get("Content-Length"), e.ContentLength, len(e.Body))
}

// TestLargeUpload: 1 GiB POSTed to echo /upload through Caddy (control
// channel: the body is streamed to the worker under upload credit, never
// held whole) with Content-Length, and 256 MiB chunked (unknown length);
// the worker reads every byte (size and SHA-256 match), and neither Caddy
// nor the worker grows by more than 64 MiB.
func TestLargeUpload(t *testing.T) {
	c, w := startEchoStreams(t)
	client := bigClient()
	defer client.CloseIdleConnections()
	checkStreamedUploads(t, client, c)
	uploadBig(t, client, c.HTTPURL("/upload"), 32*sMiB, false) // warm-up

	for _, tc := range []struct {
		name    string
		n       int64
		chunked bool
	}{
		{"1 GiB with Content-Length", sGiB, false},
		// Chunked differs only in framing: a quarter of the size keeps the
		// suite's time down on a slow machine (and under -race).
		{"256 MiB chunked", 256 * sMiB, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rss := startRSS(t, c.proc, w)
			defer rss.Stop()
			got, sum, d := uploadBig(t, client, c.HTTPURL("/upload"), tc.n, tc.chunked)
			if got.Bytes != tc.n || got.SHA256 != sum {
				t.Fatalf("the worker read %d bytes, sha256 %s; sent %d, sha256 %s", got.Bytes, got.SHA256, tc.n, sum)
			}
			t.Logf("%s: %v, %.0f MB/s", tc.name, d.Round(time.Millisecond), mbPerS(tc.n, d))
			rss.Check(tc.name, rssLimit)
		})
	}
}

// ---------------------------------------------------------------------------
// 4. Mongrel2 temp-file uploads.

type m2UploadReply struct {
	Upload       bool    `json:"upload"`
	Bytes        int64   `json:"bytes"`
	SHA256       string  `json:"sha256"`
	Error        *string `json:"error"`
	StartFirst   bool    `json:"start_first"`
	StartMessage *struct {
		Start         []string `json:"start"`
		ContentLength []string `json:"content_length"`
		BodyLen       int      `json:"body_len"`
		FileExisted   bool     `json:"file_existed"`
	} `json:"start_message"`
	Start         []string            `json:"start"`
	Done          []string            `json:"done"`
	ContentLength []string            `json:"content_length"`
	BodyLen       int                 `json:"body_len"`
	Headers       map[string][]string `json:"headers"`
}

// TestMongrel2Upload: caddyfiles/mongrel2-uploads.Caddyfile with a Python
// Mongrel2 handler (testdata/m2upload.py). A 50 MB body goes through a
// temporary file: the handler gets the upload-start message first, then
// upload-done, reads the file and finds every byte; Caddy removes the file
// afterwards. Upload headers sent by the client never reach the handler.
func TestMongrel2Upload(t *testing.T) {
	py := needFile(t, "/usr/bin/python3", "run make deps (python3-zmq)")
	if err := exec.Command(py, "-c", "import zmq").Run(); err != nil {
		if integrationRequired() {
			t.Fatalf("python3-zmq is missing (run make deps): %v", err)
		}
		t.Skipf("python3-zmq is missing: %v", err)
	}
	store := t.TempDir()
	c := startCaddy(t, caddyOpts{Config: "caddyfiles/mongrel2-uploads.Caddyfile", Env: map[string]string{
		"UPLOAD_TEMP_STORE": filepath.Join(store, "upload.XXXXXX"),
		"UPLOAD_THRESHOLD":  "16KB",
		"MAX_REQUEST_BODY":  "100MB",
	}})
	cmd := exec.Command(py, "-u", repoPath("integration", "testdata", "m2upload.py"),
		"--requests", c.Endpoint("ZMQ_REQUESTS"), "--replies", c.Endpoint("ZMQ_REPLIES"))
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
	h := startProcess(t, "m2upload.py", cmd)
	h.MustWaitFor("READY", startTimeout)
	client := bigClient()
	defer client.CloseIdleConnections()
	waitStatusOK(t, client, c.HTTPURL("/ready"), nil, c.proc, h)

	postJSON := func(t *testing.T, body io.Reader, n int64, hdr http.Header) m2UploadReply {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 4*requestTimeout)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, c.HTTPURL("/upload"), body)
		req.ContentLength = n
		for k, v := range hdr {
			req.Header[k] = v
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("POST /upload: %s %q", resp.Status, tail(string(b), 500))
		}
		var r m2UploadReply
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatalf("POST /upload: %v: %q", err, tail(string(b), 500))
		}
		return r
	}
	inStore := func(p string) bool { return filepath.Dir(p) == store && strings.HasPrefix(filepath.Base(p), "upload.") }
	spoof := http.Header{
		"X-Mongrel2-Upload-Start": {"/etc/passwd"},
		"X-Mongrel2-Upload-Done":  {"/etc/passwd"},
	}

	for _, tc := range []struct {
		name    string
		n       int64
		chunked bool
		hdr     http.Header
	}{
		{"50 MB", 50_000_000, false, nil},
		{"50 MB with spoofed upload headers", 50_000_000, false, spoof},
		{"20 MB chunked", 20_000_000, true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := tc.n
			src := newUploadSource(n)
			var body io.Reader = src
			cl := n
			if tc.chunked {
				body, cl = hideLength{src}, -1
			}
			start := time.Now()
			r := postJSON(t, body, cl, tc.hdr)
			d := time.Since(start)
			if !r.Upload || r.Error != nil {
				t.Fatalf("the handler did not get a temp-file upload: %+v", r)
			}
			if r.Bytes != n || r.SHA256 != src.Sum() {
				t.Fatalf("the file had %d bytes, sha256 %s; sent %d, sha256 %s", r.Bytes, r.SHA256, n, src.Sum())
			}
			if !r.StartFirst || r.StartMessage == nil {
				t.Fatalf("the upload-done message came without an upload-start message before it: %+v", r)
			}
			sm := r.StartMessage
			// The start message announces the length when the client did.
			var wantCL []string
			if !tc.chunked {
				wantCL = []string{strconv.FormatInt(n, 10)}
			}
			if len(sm.Start) != 1 || !inStore(sm.Start[0]) || sm.BodyLen != 0 || !slices.Equal(sm.ContentLength, wantCL) {
				t.Errorf("start message: x-mongrel2-upload-start %q (want one file in %s), body %d bytes, content-length %q",
					sm.Start, store, sm.BodyLen, sm.ContentLength)
			}
			if !sm.FileExisted {
				t.Errorf("the file %q did not exist when the start message arrived", sm.Start)
			}
			if !slices.Equal(r.Start, sm.Start) || !slices.Equal(r.Done, sm.Start) || r.BodyLen != 0 {
				t.Errorf("done message: start %q, done %q (want %q for both), body %d bytes", r.Start, r.Done, sm.Start, r.BodyLen)
			}
			if !slices.Equal(r.ContentLength, []string{strconv.FormatInt(n, 10)}) {
				t.Errorf("done message: content-length %q, want %d", r.ContentLength, n)
			}
			// The handler's log: the start line of this file before its done
			// line. The output comes through a pipe and may lag the reply.
			if err := h.WaitFor(" "+sm.Start[0]+" ", lineTimeout); err != nil {
				t.Errorf("no UPLOAD-DONE line for %s: %v", sm.Start[0], err)
			}
			iStart, iDone := -1, -1
			for i, l := range strings.Split(h.out.String(), "\n") {
				f := strings.Fields(l)
				switch {
				case len(f) == 3 && f[0] == "UPLOAD-START" && f[2] == sm.Start[0]:
					iStart = i
				case len(f) == 4 && f[0] == "UPLOAD-DONE" && f[2] == sm.Start[0]:
					iDone = i
				}
			}
			if iStart < 0 || iDone < 0 || iStart > iDone {
				t.Errorf("the handler's output does not show the start of %s before its end:\n%s", sm.Start[0], tail(h.out.String(), 2000))
			}
			t.Logf("%s: %v (%.0f MB/s), file %s", tc.name, d.Round(time.Millisecond), mbPerS(n, d), sm.Start[0])
			// Caddy removes the file once the exchange is over.
			err := poll(lineTimeout, nil, func() error {
				if pathExists(sm.Start[0]) {
					return fmt.Errorf("%s still exists", sm.Start[0])
				}
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		})
	}

	t.Run("spoofed upload headers on a small body", func(t *testing.T) {
		body := "small body, sent inline"
		r := postJSON(t, strings.NewReader(body), int64(len(body)), spoof)
		if r.Upload {
			t.Fatalf("the handler took a small body with client-sent upload headers for an upload: %+v", r)
		}
		if r.BodyLen != len(body) {
			t.Errorf("the handler got %d body bytes, want %d", r.BodyLen, len(body))
		}
		for k, v := range r.Headers {
			if strings.HasPrefix(k, "x-mongrel2-upload") {
				t.Errorf("the client's %s: %q reached the handler", k, v)
			}
		}
	})

	if entries, err := os.ReadDir(store); err != nil || len(entries) != 0 {
		t.Errorf("upload store %s not empty at the end: %v %v", store, entries, err)
	}
}

// ---------------------------------------------------------------------------
// 6. Disconnects reach the right worker.

// TestCancelDisconnect: three echo workers on Caddy's control channel. A
// client gives up on /wait while a worker holds it; Caddy sends DISCONNECT
// to exactly that worker, whose handler's context ends: it prints
// "CANCELLED /wait <uri>" in well under a second. (Without the control
// channel, Mongrel2's disconnect notice is PUSHed to any one of the
// workers: two times in three to the wrong one.)
//
// When the handler holds the request is known without waiting blindly:
// the request is a POST with "Expect: 100-continue" and a body of unknown
// length, so Caddy streams the body, which it starts reading (and so sends
// "100 Continue") only once a worker has acknowledged the request; the
// handler prints "WAITING /wait <uri>" once it runs (a POST with a dispatch
// deadline starts only once Caddy has confirmed the ACK, ZMQX_CONFIRM).
func TestCancelDisconnect(t *testing.T) {
	const workers, requests = 3, 6
	c := startStreamsCaddy(t, true, nil)
	var ws []*process
	for i := range workers {
		ws = append(ws, startEchoWorker(t, c, fmt.Sprintf("echo-%d", i+1)))
	}
	waitControlWorkers(t, c, workers, ws...)
	probe := c.Client(modeH2)
	defer probe.CloseIdleConnections()
	waitStatusOK(t, probe, c.HTTPSURL("/big?bytes=1"), nil, append(ws, c.proc)...)

	tr := newClient(modeH2, c.roots).Transport.(*http.Transport)
	tr.ExpectContinueTimeout = time.Minute // never send the body unasked
	client := &http.Client{Transport: tr}
	defer client.CloseIdleConnections()

	perWorker := map[string]int{}
	var delays []time.Duration
	for i := range requests {
		uri := "/wait?token=" + newToken(fmt.Sprintf("cancel-%d", i))
		ctx, cancel := context.WithCancel(context.Background())
		got100 := make(chan struct{})
		var once sync.Once
		trace := &httptrace.ClientTrace{Got100Continue: func() { once.Do(func() { close(got100) }) }}
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), http.MethodPost,
			c.HTTPSURL(uri), hideLength{strings.NewReader("x")})
		req.ContentLength = -1
		req.Header.Set("Expect", "100-continue")
		done := make(chan error, 1)
		go func() {
			resp, err := client.Do(req)
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				err = fmt.Errorf("got a response: %s %q", resp.Status, tail(string(b), 300))
			}
			done <- err
		}()
		select {
		case <-got100:
		case err := <-done:
			cancel()
			t.Fatalf("%s: %v", uri, err)
		case <-time.After(lineTimeout):
			cancel()
			t.Fatalf("%s: no 100 Continue within %v: no worker acknowledged the request", uri, lineTimeout)
		}

		if _, _, err := waitAnyOutput(ws, "WAITING /wait "+uri, lineTimeout); err != nil {
			cancel()
			t.Fatalf("%s: the handler never started: %v", uri, err)
		}
		// echo prints the request URI after the path.
		line := "CANCELLED /wait " + uri
		cancelled := time.Now()
		cancel()
		j, at, err := waitAnyOutput(ws, line, lineTimeout)
		if err != nil {
			t.Fatalf("%s: %v", uri, err)
		}
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Logf("%s: client: %v", uri, err)
		}
		for k, w := range ws {
			if k != j && strings.Contains(w.out.String(), line) {
				t.Errorf("%s: %s and %s both printed %q", uri, ws[j].name, w.name, line)
			}
		}
		delay := at.Sub(cancelled)
		name := ws[j].name
		perWorker[name]++
		delays = append(delays, delay)
		t.Logf("%s: %s cancelled its handler %v after the client gave up", uri, name, delay.Round(time.Microsecond))
		if delay >= time.Second {
			t.Errorf("%s: %s printed CANCELLED %v after the client gave up, want < 1s", uri, name, delay)
		}
	}
	slices.Sort(delays)
	t.Logf("cancel -> CANCELLED: min %v, median %v, max %v; requests per worker: %v",
		delays[0].Round(time.Microsecond), delays[len(delays)/2].Round(time.Microsecond),
		delays[len(delays)-1].Round(time.Microsecond), perWorker)
	// Late duplicates: every line must have been printed by one worker only.
	for _, w := range ws {
		if n := strings.Count(w.out.String(), "CANCELLED "); n != perWorker[w.name] {
			t.Errorf("%s printed CANCELLED %d times, for %d of the requests", w.name, n, perWorker[w.name])
		}
	}
	if len(perWorker) < 2 {
		t.Errorf("all %d requests went to one worker (%v): the test did not show that disconnects find the right one", requests, perWorker)
	}
}

// waitAnyOutput waits until one of procs prints s and returns its index
// and the moment the output arrived (to within a wake-up of this
// goroutine).
func waitAnyOutput(procs []*process, s string, timeout time.Duration) (int, time.Time, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		cases := make([]reflect.SelectCase, 0, len(procs)+1)
		for i, p := range procs {
			out, changed := p.out.snapshot()
			if strings.Contains(out, s) {
				return i, time.Now(), nil
			}
			cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(changed)})
		}
		cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(deadline.C)})
		if i, _, _ := reflect.Select(cases); i == len(procs) {
			return -1, time.Time{}, fmt.Errorf("no process printed %q within %v", s, timeout)
		}
	}
}

// TestCancelBeforeAck: a client that gives up before any worker's ACK has
// reached Caddy must not leave the handler running when there are several
// workers. Caddy then PUSHes Mongrel2's disconnect notice, which goes to
// any one of the workers; the ACK that arrives afterwards for the finished
// exchange is answered with a DISCONNECT to the worker that sent it.
//
// The check: 30 requests to /wait, each cancelled 0-5 ms after it was
// written; two seconds later (twice the bound of TestCancelDisconnect) the
// workers are asked to stop and report how many handlers they still run
// ("worker stopping: ... in_flight=N"); every client is gone, so N must be 0.
func TestCancelBeforeAck(t *testing.T) {
	const workers, requests = 3, 30
	c := startStreamsCaddy(t, false, nil)
	var ws []*process
	for i := range workers {
		ws = append(ws, startEchoWorker(t, c, fmt.Sprintf("echo-%d", i+1)))
	}
	waitControlWorkers(t, c, workers, ws...)
	probe := c.Client(modeHTTP)
	defer probe.CloseIdleConnections()
	waitStatusOK(t, probe, c.HTTPURL("/big?bytes=1"), nil, append(ws, c.proc)...)

	client := newClient(modeHTTP, nil)
	defer client.CloseIdleConnections()
	for i := range requests {
		ctx, cancel := context.WithCancel(context.Background())
		wrote := make(chan struct{})
		trace := &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) { close(wrote) }}
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), http.MethodGet,
			c.HTTPURL(fmt.Sprintf("/wait?early=%d", i)), nil)
		done := make(chan struct{})
		go func() {
			if resp, err := client.Do(req); err == nil {
				resp.Body.Close()
			}
			close(done)
		}()
		<-wrote
		time.Sleep(time.Duration(i%6) * time.Millisecond) // vary where the cancel lands
		cancel()
		<-done
	}
	time.Sleep(2 * time.Second) // the grace under test, not synchronisation
	cancelled := 0
	for _, w := range ws {
		cancelled += strings.Count(w.out.String(), "CANCELLED /wait")
		_ = syscall.Kill(pidOf(w), syscall.SIGTERM)
	}
	leaked := 0
	for _, w := range ws {
		w.MustWaitFor("worker stopping", lineTimeout)
		m := regexp.MustCompile(`worker stopping: .* in_flight=(\d+)`).FindStringSubmatch(w.out.String())
		if m == nil {
			t.Fatalf("%s: no in_flight count in %q", w.name, tail(w.out.String(), 2000))
		}
		n, _ := strconv.Atoi(m[1])
		leaked += n
		_ = syscall.Kill(pidOf(w), syscall.SIGTERM) // again: cancel what it still runs
	}
	t.Logf("%d of %d cancelled requests ended on a worker; %d handlers still ran 2s after their clients left", cancelled, requests, leaked)
	if leaked > 0 {
		t.Errorf("%d /wait handlers still ran 2s after their clients had left", leaked)
	}
}
