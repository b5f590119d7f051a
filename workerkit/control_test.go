package workerkit

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
)

// HELLO on connect (and again after the front end's control socket comes
// back), a heartbeat every 250 ms, BYE when draining.
func TestControlLifecycle(t *testing.T) {
	tests := []struct {
		name    string
		id      string
		maxConc int
		wantID  *regexp.Regexp
		hello   string
	}{
		{name: "default id", wantID: regexp.MustCompile(`^wk-[0-9a-f]{16}$`), hello: "HELLO 64"},
		{name: "chosen id", id: "wk-00112233445566ff", maxConc: 7, wantID: regexp.MustCompile(`^wk-00112233445566ff$`), hello: "HELLO 7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newTestFECtl(t)
			w := startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: dumpHandler, ID: tt.id, MaxConcurrent: tt.maxConc})
			hello := f.ctlWait("HELLO", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "HELLO") })
			eq(t, "first message", hello.body, tt.hello)
			if len(f.ctlLog) != 1 {
				t.Errorf("messages before HELLO: %v", f.ctlLog)
			}
			if !tt.wantID.MatchString(hello.id) {
				t.Errorf("identity %q does not match %v", hello.id, tt.wantID)
			}

			var hbs []ctlMsg
			for len(hbs) < 4 {
				hbs = append(hbs, f.ctlWaitBody("HB"))
			}
			if d := hbs[3].at.Sub(hbs[0].at) / 3; d < 150*time.Millisecond || d > 600*time.Millisecond {
				t.Errorf("heartbeat every %v, want 250ms", d)
			}
			for _, m := range f.ctlLog {
				eq(t, "identity of "+m.body, m.id, hello.id)
			}

			// The front end restarts its control socket: greeted again.
			f.closeCtl()
			f.rebindCtl()
			again := f.ctlWait("HELLO after reconnect", func(m ctlMsg) bool { return m.body != "HB" })
			eq(t, "first message after reconnect", again.body, tt.hello)
			eq(t, "identity after reconnect", again.id, hello.id)

			// Still serving; then BYE on shutdown.
			f.request("1", treq{})
			eq(t, "status", f.readReply("1", "GET").resp.StatusCode, 200)
			must(t, w.stop())
			f.ctlWaitBody("BYE")
		})
	}
}

// ACK <conn> goes out before the handler runs, for requests with
// ZMQX_WINDOW on a front end with a control channel, and only then.
func TestControlAck(t *testing.T) {
	withCtl, noCtl := newTestFECtl(t), newTestFE(t)
	started := make(chan string, 1)
	release := make(chan struct{}, 1)
	h := func(w http.ResponseWriter, r *http.Request) {
		started <- r.URL.Path
		<-release
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		_, _ = w.Write(bytes.Repeat([]byte("z"), n))
	}
	startWorker(t, &Worker{FrontEnds: []FrontEnd{withCtl.fe, noCtl.fe}, Handler: http.HandlerFunc(h)})
	withCtl.ctlWait("HELLO", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "HELLO") })

	const big = 2 << 20 // far beyond the windows below: flow control would stall it
	tests := []struct {
		name    string
		f       *testFE
		window  string
		n       int
		wantAck bool
	}{
		{name: "window: ACK before the handler", f: withCtl, window: "1048576", n: 100, wantAck: true},
		{name: "no window: no ACK, no flow control", f: withCtl, n: big},
		{name: "invalid window: ignored", f: withCtl, window: "lots", n: big},
		{name: "zero window: ignored", f: withCtl, window: "0", n: big},
		{name: "front end without control: window ignored", f: noCtl, window: "65536", n: big},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := strconv.Itoa(10 + i)
			tt.f.request(conn, treq{uri: "/x?n=" + strconv.Itoa(tt.n), window: tt.window})
			recvWithin(t, started, "handler start")
			if tt.wantAck {
				// The handler is blocked: the ACK was sent before it ran.
				m := withCtl.ctlWait("ACK", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "ACK") })
				eq(t, "ACK", m.body, "ACK "+conn)
			}
			release <- struct{}{}
			r := tt.f.readReply(conn, "GET")
			eq(t, "body length", len(r.body), tt.n)
			if !tt.wantAck {
				// A windowed marker request: its ACK must be the first one.
				marker := strconv.Itoa(1000 + i)
				withCtl.request(marker, treq{window: "1048576"})
				recvWithin(t, started, "marker start")
				release <- struct{}{}
				m := withCtl.ctlWait("ACK", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "ACK") })
				eq(t, "first ACK", m.body, "ACK "+marker)
				withCtl.readReply(marker, "GET")
			}
		})
	}
}

// DISCONNECT over the control channel cancels the request's context, like
// the Mongrel2 notice; only for that connection.
func TestControlDisconnect(t *testing.T) {
	f := newTestFECtl(t)
	started := make(chan string, 4)
	cancelled := make(chan string, 4)
	h := func(w http.ResponseWriter, r *http.Request) {
		started <- r.URL.Path
		<-r.Context().Done()
		cancelled <- r.URL.Path
	}
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: http.HandlerFunc(h)})
	id := f.ctlWait("HELLO", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "HELLO") }).id

	tests := []struct {
		name   string
		window string
		cancel func(conn string)
	}{
		{"DISCONNECT, windowed request", "1048576", func(conn string) { f.ctlSend(id, "DISCONNECT "+conn) }},
		{"DISCONNECT, request without window", "", func(conn string) { f.ctlSend(id, "DISCONNECT "+conn) }},
		{"Mongrel2 notice, windowed request", "1048576", func(conn string) { f.send(mongrel2.AppendDisconnect(nil, f.sender, conn)) }},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, sentinel := strconv.Itoa(20+i), strconv.Itoa(120+i)
			f.request(conn, treq{uri: "/wait/" + conn, window: tt.window})
			f.request(sentinel, treq{uri: "/wait/" + sentinel, window: "1048576"})
			recvWithin(t, started, "handler start")
			recvWithin(t, started, "handler start")
			// Messages about other connections, and nonsense, change
			// nothing. The control socket is read in order: once the
			// sentinel's DISCONNECT has worked, all of them were handled.
			for _, junk := range []string{"DISCONNECT 999", "DISCONNECT", "DISCONNECT x1", "DISCONNECT " + conn + " extra",
				"CREDIT " + conn, "CREDIT " + conn + " -5", "CREDIT " + conn + " 1 2", "NOPE " + conn, ""} {
				f.ctlSend(id, junk)
			}
			f.ctlSend(id, "DISCONNECT "+sentinel)
			eq(t, "first cancelled", recvWithin(t, cancelled, "sentinel cancellation"), "/wait/"+sentinel)
			t0 := time.Now()
			tt.cancel(conn)
			eq(t, "cancelled", recvWithin(t, cancelled, "cancellation"), "/wait/"+conn)
			if d := time.Since(t0); d > 500*time.Millisecond {
				t.Errorf("cancellation took %v", d)
			}
			// The client is gone: nothing more is sent for either.
		})
	}
}

// flowHook routes testHookFlowBlocked to a channel for one test.
func flowHook(t *testing.T) <-chan int64 {
	c := make(chan int64, 64)
	testHookFlowBlocked = func(credit, need int64) {
		select {
		case c <- credit:
		default:
		}
	}
	t.Cleanup(func() { testHookFlowBlocked = nil })
	return c
}

// Without credit a reply stops after the window; CREDIT lets it go on;
// DISCONNECT (or the notice) makes the blocked Write or Flush fail and ends
// the handler's context at once.
func TestFlowControl(t *testing.T) {
	const window = 1 << 20
	blocked := flowHook(t)
	f := newTestFECtl(t)
	type result struct {
		err     error
		ctxDone bool
		at      time.Time
	}
	var written atomic.Int64
	results := make(chan result, 1)
	h := func(w http.ResponseWriter, r *http.Request) {
		written.Store(0)
		chunk := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
		rc := http.NewResponseController(w)
		var err error
		for total := 0; total < 1<<30 && err == nil; { // 1 GiB to a client that reads nothing
			if r.URL.Path == "/flush" {
				_, err = w.Write(chunk[:1000])
				if err == nil {
					err = rc.Flush()
				}
				total += 1000
			} else {
				_, err = w.Write(chunk)
				total += len(chunk)
			}
			if err == nil {
				written.Store(int64(total))
			}
		}
		results <- result{err, r.Context().Err() != nil, time.Now()}
	}
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: http.HandlerFunc(h)})
	id := f.ctlWait("HELLO", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "HELLO") }).id

	tests := []struct {
		name, path string
		cancel     func(conn string)
	}{
		{"64 KiB writes, DISCONNECT", "/write", func(conn string) { f.ctlSend(id, "DISCONNECT "+conn) }},
		{"small flushed writes, DISCONNECT", "/flush", func(conn string) { f.ctlSend(id, "DISCONNECT "+conn) }},
		{"64 KiB writes, Mongrel2 notice", "/write", func(conn string) { f.send(mongrel2.AppendDisconnect(nil, f.sender, conn)) }},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := strconv.Itoa(30 + i)
			f.request(conn, treq{uri: tt.path, window: strconv.Itoa(window)})
			f.ctlWaitBody("ACK " + conn)
			var received, granted int64 = 0, window
			var head []byte
			// waitStall waits until the writer is blocked and everything it
			// sent has arrived, and checks the bounds.
			waitStall := func(round string) {
				t.Helper()
				deadline := time.Now().Add(waitTimeout)
				for {
					var credit int64
					select {
					case credit = <-blocked:
					case <-time.After(time.Until(deadline)):
						t.Fatalf("%s: the writer never blocked (received %d, granted %d)", round, received, granted)
					}
					for received < granted-credit {
						body, err := f.next(conn, time.Until(deadline))
						if err != nil {
							t.Fatalf("%s: %v after %d of %d bytes", round, err, received, granted-credit)
						}
						if head == nil {
							head = body[:min(len(body), 200)]
						}
						received += int64(len(body))
					}
					if received == granted-credit {
						break // stalled, and we have all it sent
					}
					t.Fatalf("%s: received %d bytes, more than granted-credit %d", round, received, granted-credit)
				}
				if received > granted {
					t.Errorf("%s: received %d body bytes, granted only %d", round, received, granted)
				}
				if received <= granted-minCreditChunk {
					t.Errorf("%s: stalled at %d bytes, %d short of the %d granted: frames should be cut to the credit", round, received, granted-received, granted)
				}
				// Memory: the handler is at most a buffer and a frame ahead.
				if ahead := written.Load() - received; ahead > bufSize+maxMsgBody {
					t.Errorf("%s: handler wrote %d bytes beyond what was sent", round, ahead)
				}
				select {
				case r := <-results:
					t.Fatalf("%s: handler returned while it should be blocked: %+v", round, r)
				default:
				}
			}
			waitStall("no credit")
			if !bytes.HasPrefix(head, []byte("HTTP/1.1 200 OK\r\n")) {
				t.Fatalf("first frame %q", head)
			}
			f.ctlSend(id, "CREDIT "+conn+" "+strconv.Itoa(window/2))
			granted += window / 2
			waitStall("after CREDIT")

			t0 := time.Now()
			tt.cancel(conn)
			r := recvWithin(t, results, "the handler to return")
			if r.err == nil || !r.ctxDone {
				t.Errorf("after cancel: write error %v, context done %v", r.err, r.ctxDone)
			}
			if d := r.at.Sub(t0); d > 300*time.Millisecond {
				t.Errorf("blocked write returned %v after the disconnect", d)
			}
		})
	}
}

// A fast client: the front end grants credit as the module does (what it
// has written, once that is at least a quarter window), and the whole body
// arrives; the worker never has more than the window outstanding, and never
// stalls waiting for credit the front end is not going to grant.
func TestFlowPacedDownload(t *testing.T) {
	const window = 256 << 10 // the module's minimum
	const size = 4<<20 + 12345
	want := make([]byte, size)
	for i := range want {
		want[i] = byte('a' + i%26)
	}
	f := newTestFECtl(t)
	h := func(w http.ResponseWriter, r *http.Request) {
		p := want
		write := func(n int) bool {
			n = min(n, len(p))
			_, err := w.Write(p[:n])
			p = p[n:]
			return err == nil
		}
		switch r.URL.Path {
		case "/100k":
			for len(p) > 0 && write(100_000) {
			}
		case "/small-flush-then-big":
			// 10 KiB outstanding is less than a credit batch: a 256 KiB
			// frame that waited for 256 KiB of credit would wait forever.
			if !write(10 << 10) {
				return
			}
			w.(http.Flusher).Flush()
			write(len(p))
		case "/flushed-odd-sizes":
			for i := 0; len(p) > 0; i++ {
				if !write(1 + i*7919%70_000) {
					return
				}
				w.(http.Flusher).Flush()
			}
		}
	}
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: http.HandlerFunc(h)})
	id := f.ctlWait("HELLO", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "HELLO") }).id

	for i, path := range []string{"/100k", "/small-flush-then-big", "/flushed-odd-sizes"} {
		t.Run(path, func(t *testing.T) {
			conn := strconv.Itoa(40 + i)
			f.request(conn, treq{uri: path, window: strconv.Itoa(window)})
			f.ctlWaitBody("ACK " + conn)
			var received, granted, owed int64 = 0, window, 0
			var raw []byte
			for !bytes.HasSuffix(raw, []byte("0\r\n\r\n")) {
				body, err := f.next(conn, 5*time.Second)
				if err != nil {
					t.Fatalf("after %d bytes (granted %d): %v", received, granted, err)
				}
				raw = append(raw, body...)
				received += int64(len(body))
				owed += int64(len(body))
				if received > granted {
					t.Fatalf("received %d body bytes, granted only %d", received, granted)
				}
				if owed >= window/4 {
					f.ctlSend(id, "CREDIT "+conn+" "+strconv.FormatInt(owed, 10))
					granted += owed
					owed = 0
				}
			}
			resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(raw)), nil)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(body, want) {
				t.Fatalf("body differs: %d bytes, want %d", len(body), len(want))
			}
		})
	}
}

// When the control connection drops, nobody can grant credit any more:
// blocked replies go on instead of hanging.
func TestFlowLiftedWhenControlLost(t *testing.T) {
	const window = 256 << 10
	blocked := flowHook(t)
	f := newTestFECtl(t)
	const size = 3 << 20
	h := func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(bytes.Repeat([]byte("y"), size))
	}
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: http.HandlerFunc(h)})
	f.ctlWait("HELLO", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "HELLO") })
	f.request("1", treq{window: strconv.Itoa(window)})
	f.ctlWaitBody("ACK 1")
	recvWithin(t, blocked, "the writer to block")
	f.closeCtl()
	r := f.readReply("1", "GET")
	eq(t, "body length", len(r.body), size)
}

// The DEALER's identity must be acceptable to libzmq and readable in logs.
func TestWorkerID(t *testing.T) {
	re := regexp.MustCompile(`^wk-[0-9a-f]{16}$`)
	a, b := NewWorkerID(), NewWorkerID()
	if !re.MatchString(a) || a == b {
		t.Errorf("NewWorkerID: %q, %q", a, b)
	}
	for id, ok := range map[string]bool{
		"wk-0011223344556677": true, "worker-7": true, strings.Repeat("x", 255): true,
		"": false, strings.Repeat("x", 256): false, "has space": false, "tab\t": false, "\x00wk": false, "é": false,
	} {
		if err := checkWorkerID(id); (err == nil) != ok {
			t.Errorf("checkWorkerID(%q) = %v, want ok %v", id, err, ok)
		}
	}
}

func TestReplyPrefixLen(t *testing.T) {
	for _, c := range []struct{ sender, conn string }{{"s", "1"}, {testSender, "123456789"}, {"x", "1234567890"}, {"", ""}} {
		eq(t, c.sender+"/"+c.conn, replyPrefixLen(c.sender, c.conn), len(mongrel2.AppendReplyOne(nil, c.sender, c.conn, nil)))
	}
}
