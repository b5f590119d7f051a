package workerkit

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
)

const (
	testSender  = "34f9ceee-cd52-4b7f-b197-88bf2f0ec378"
	waitTimeout = 10 * time.Second
)

// testFE plays the front end: it binds PUSH (requests) and SUB (replies) on
// free ports, exactly as Caddy or Mongrel2 does. Its sockets belong to the
// test goroutine.
type testFE struct {
	t      testing.TB
	zctx   *zmq.Context
	push   *zmq.Socket
	sub    *zmq.Socket
	ctl    *zmq.Socket // ROUTER, with newTestFECtl
	ctlLog []ctlMsg    // every control message received, in order
	// ctlBacklog: control messages read while the test waited on
	// something else (pumpCtl), not yet returned by ctlRecv.
	ctlBacklog []ctlMsg
	// noWelcome: do not answer HELLO with WELCOME, as a front end that
	// predates WELCOME (or one that does not read the connection).
	noWelcome bool
	fe        FrontEnd
	sender    string
	pending   map[string][][]byte // reply bodies for connections nobody asked about yet
	closed    bool
}

func newTestFE(t testing.TB) *testFE {
	t.Helper()
	return newTestFESender(t, testSender)
}

func newTestFESender(t testing.TB, sender string) *testFE {
	t.Helper()
	zctx, err := zmq.NewContext()
	if err != nil {
		t.Fatal(err)
	}
	f := &testFE{t: t, zctx: zctx, sender: sender, pending: map[string][][]byte{}}
	f.push = f.bind(zmq.PUSH, "")
	f.fe.Requests, _ = f.push.GetLastEndpoint()
	f.sub = f.bind(zmq.SUB, "tcp://127.0.0.1:*")
	f.fe.Replies, _ = f.sub.GetLastEndpoint()
	t.Cleanup(f.close)
	return f
}

// newTestFECtl is newTestFE with a control channel: a ROUTER bound as the
// module binds it (ROUTER_MANDATORY on).
func newTestFECtl(t testing.TB) *testFE {
	t.Helper()
	f := newTestFE(t)
	f.bindCtl("")
	f.fe.Control, _ = f.ctl.GetLastEndpoint()
	return f
}

func (f *testFE) bindCtl(ep string) {
	f.ctl = f.bind(zmq.ROUTER, ep)
	must(f.t, f.ctl.SetRouterMandatory(1))
}

// closeCtl closes the control socket, as a front end that stops would.
func (f *testFE) closeCtl() { must(f.t, f.ctl.Close()); f.ctl = nil; f.ctlBacklog = nil }

// rebindCtl binds a new control socket on the same endpoint.
func (f *testFE) rebindCtl() { f.bindCtl(f.fe.Control) }

func (f *testFE) bind(typ zmq.Type, ep string) *zmq.Socket {
	f.t.Helper()
	s, err := f.zctx.NewSocket(typ)
	if err != nil {
		f.t.Fatal(err)
	}
	must(f.t, s.SetLinger(0))
	if typ == zmq.SUB {
		must(f.t, s.SetSubscribe(f.sender+" "))
	}
	if ep == "" {
		ep = "tcp://127.0.0.1:*"
	}
	deadline := time.Now().Add(waitTimeout)
	for {
		err = s.Bind(ep)
		if err == nil {
			return s
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("bind %s: %v", ep, err)
		}
		// A port just released may be briefly unavailable: retry.
		time.Sleep(10 * time.Millisecond)
	}
}

// rebindSub replaces the reply socket, as a restarted front end would.
func (f *testFE) closeSub()  { must(f.t, f.sub.Close()) }
func (f *testFE) rebindSub() { f.sub = f.bind(zmq.SUB, f.fe.Replies) }

func (f *testFE) close() {
	if f.closed {
		return
	}
	f.closed = true
	_ = f.push.Close()
	if f.sub != nil {
		_ = f.sub.Close()
	}
	if f.ctl != nil {
		_ = f.ctl.Close()
	}
	_ = f.zctx.Term()
}

// send pushes one frame. Until a worker has connected the PUSH has no peer;
// the worker connects only after our subscription reached it, and a bound
// SUB only attaches (and subscribes) a new peer when we call into it, so
// keep touching the SUB while waiting.
func (f *testFE) send(msg []byte) {
	f.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		_, err := f.push.SendBytes(msg, zmq.DONTWAIT)
		if err == nil {
			return
		}
		if !isEAGAIN(err) {
			f.t.Fatalf("push: %v", err)
		}
		if time.Now().After(deadline) {
			f.t.Fatal("no worker connected to the request socket")
		}
		f.touchSub()
		p := zmq.NewPoller()
		p.Add(f.push, zmq.POLLOUT)
		_, _ = p.Poll(5 * time.Millisecond)
	}
}

// waitWorker waits until a worker has connected to the request socket,
// which it does only once our subscription has reached it: from then on it
// takes work, and its replies reach us.
func (f *testFE) waitWorker() {
	f.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	p := zmq.NewPoller()
	p.Add(f.push, zmq.POLLOUT)
	for !f.pushHasPeer() {
		if time.Now().After(deadline) {
			f.t.Fatal("no worker connected to the request socket")
		}
		f.touchSub() // lets the SUB attach the worker (see send)
		_, _ = p.Poll(5 * time.Millisecond)
	}
}

// touchSub calls into the SUB socket, so that a bound SUB attaches new
// peers (see send). A connecting front end may have no SUB yet.
func (f *testFE) touchSub() {
	if f.sub != nil {
		_, _ = f.sub.GetEvents()
	}
	f.pumpCtl()
}

// pumpCtl reads the control messages that have arrived into ctlBacklog,
// answering HELLOs as the module does: a worker takes no request before
// its control connection is answered, and a test may be waiting on
// something else meanwhile.
func (f *testFE) pumpCtl() {
	if f.ctl == nil {
		return
	}
	for {
		parts, err := f.ctl.RecvMessage(zmq.DONTWAIT)
		if err != nil {
			return
		}
		if len(parts) == 2 {
			f.ctlBacklog = append(f.ctlBacklog, f.noteCtl(parts))
		}
	}
}

// noteCtl logs a control message read, and answers a HELLO with WELCOME.
func (f *testFE) noteCtl(parts []string) ctlMsg {
	m := ctlMsg{id: parts[0], body: parts[1], at: time.Now()}
	f.ctlLog = append(f.ctlLog, m)
	if strings.HasPrefix(m.body, "HELLO") && !f.noWelcome {
		_, _ = f.ctl.SendMessage(m.id, "WELCOME")
	}
	return m
}

// newTestFEConnect plays a front end in the other topology (the Caddy
// module's `to` lines): it CONNECTS its PUSH to a binding worker's request
// endpoint and, with connectSub, its SUB to the worker's reply endpoint.
// The PUSH has IMMEDIATE set, as the module's has in that mode.
func newTestFEConnect(t testing.TB, fe FrontEnd, sender string) *testFE {
	t.Helper()
	zctx, err := zmq.NewContext()
	if err != nil {
		t.Fatal(err)
	}
	f := &testFE{t: t, zctx: zctx, sender: sender, pending: map[string][][]byte{}, fe: fe}
	t.Cleanup(f.close)
	f.push, err = zctx.NewSocket(zmq.PUSH)
	must(t, err)
	must(t, f.push.SetLinger(0))
	must(t, f.push.SetImmediate(true))
	must(t, f.push.Connect(fe.Requests))
	return f
}

// connectSub connects the SUB of a front end made by newTestFEConnect.
func (f *testFE) connectSub() {
	f.t.Helper()
	var err error
	f.sub, err = f.zctx.NewSocket(zmq.SUB)
	must(f.t, err)
	must(f.t, f.sub.SetLinger(0))
	must(f.t, f.sub.SetSubscribe(f.sender+" "))
	must(f.t, f.sub.Connect(f.fe.Replies))
}

// pushHasPeer reports whether some worker is connected to the PUSH socket.
func (f *testFE) pushHasPeer() bool {
	ev, err := f.push.GetEvents()
	must(f.t, err)
	return ev&zmq.POLLOUT != 0
}

var errNoReply = errors.New("no reply before the deadline")

// next returns the body of the next reply frame for conn.
func (f *testFE) next(conn string, timeout time.Duration) ([]byte, error) {
	if q := f.pending[conn]; len(q) > 0 {
		f.pending[conn] = q[1:]
		return q[0], nil
	}
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return nil, errNoReply
		}
		must(f.t, f.sub.SetRcvtimeo(min(left, 100*time.Millisecond)))
		msg, err := f.sub.RecvBytes(0)
		if err != nil {
			if isEAGAIN(err) {
				continue
			}
			return nil, err
		}
		sender, ids, body, err := mongrel2.ParseReply(msg)
		if err != nil {
			return nil, fmt.Errorf("bad reply frame %q: %v", msg, err)
		}
		if string(sender) != f.sender {
			return nil, fmt.Errorf("reply for sender %q, want %q", sender, f.sender)
		}
		id, rest := mongrel2.NextID(ids)
		if rest != nil {
			return nil, fmt.Errorf("reply names several connections: %q", ids)
		}
		if string(id) == conn {
			return body, nil
		}
		f.pending[string(id)] = append(f.pending[string(id)], body)
	}
}

// ctlMsg is one control message as the front end's ROUTER sees it.
type ctlMsg struct {
	id   string // the worker's identity
	body string
	at   time.Time
}

// ctlRecv returns the next control message.
func (f *testFE) ctlRecv(timeout time.Duration) (ctlMsg, error) {
	deadline := time.Now().Add(timeout)
	for {
		// Keep the SUB attaching new peers meanwhile (see send).
		f.touchSub()
		if len(f.ctlBacklog) > 0 {
			m := f.ctlBacklog[0]
			f.ctlBacklog = f.ctlBacklog[1:]
			return m, nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return ctlMsg{}, errNoReply
		}
		must(f.t, f.ctl.SetRcvtimeo(min(left, 20*time.Millisecond)))
		parts, err := f.ctl.RecvMessage(0)
		if err != nil {
			if isEAGAIN(err) {
				continue
			}
			return ctlMsg{}, err
		}
		if len(parts) != 2 {
			return ctlMsg{}, fmt.Errorf("control message with %d frames: %q", len(parts), parts)
		}
		return f.noteCtl(parts), nil
	}
}

// ctlWait returns the next control message for which match is true,
// skipping others (heartbeats).
func (f *testFE) ctlWait(what string, match func(ctlMsg) bool) ctlMsg {
	f.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		m, err := f.ctlRecv(time.Until(deadline))
		if err != nil {
			f.t.Fatalf("waiting for control message %s: %v (seen %v)", what, err, f.ctlLog)
		}
		if match(m) {
			return m
		}
	}
}

// ctlWaitBody waits for a control message with exactly this body.
func (f *testFE) ctlWaitBody(body string) ctlMsg {
	f.t.Helper()
	return f.ctlWait(strconv.Quote(body), func(m ctlMsg) bool { return m.body == body })
}

// ackIDs returns the connection ids of an ACK message (several when
// coalesced), nil for any other message.
func ackIDs(m ctlMsg) []string {
	rest, ok := strings.CutPrefix(m.body, "ACK ")
	if !ok {
		return nil
	}
	return strings.Split(rest, " ")
}

// ctlWaitAck waits for an ACK message that names conn, alone or among others.
func (f *testFE) ctlWaitAck(conn string) ctlMsg {
	f.t.Helper()
	return f.ctlWait("ACK naming "+conn, func(m ctlMsg) bool { return slices.Contains(ackIDs(m), conn) })
}

// ctlSend sends one control message to the worker with identity id.
func (f *testFE) ctlSend(id, body string) {
	f.t.Helper()
	if _, err := f.ctl.SendMessage(id, body); err != nil {
		f.t.Fatalf("control send %q to %q: %v", body, id, err)
	}
}

// recvFrame returns the next reply frame, whatever connections it names.
// Group tests read frames with it; it bypasses the per-connection queue of
// next.
func (f *testFE) recvFrame(timeout time.Duration) (ids []string, body []byte, err error) {
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return nil, nil, errNoReply
		}
		must(f.t, f.sub.SetRcvtimeo(min(left, 100*time.Millisecond)))
		msg, err := f.sub.RecvBytes(0)
		if err != nil {
			if isEAGAIN(err) {
				continue
			}
			return nil, nil, err
		}
		sender, raw, body, err := mongrel2.ParseReply(msg)
		if err != nil {
			return nil, nil, fmt.Errorf("bad reply frame %q: %v", printable(msg, 200), err)
		}
		if string(sender) != f.sender {
			return nil, nil, fmt.Errorf("reply for sender %q, want %q", sender, f.sender)
		}
		for id, rest := mongrel2.NextID(raw); id != nil; id, rest = mongrel2.NextID(rest) {
			ids = append(ids, string(id))
		}
		return ids, body, nil
	}
}

// treq describes a request the test front end sends.
type treq struct {
	method   string // default GET
	uri      string // default /
	version  string // default HTTP/1.1
	scheme   string // default http
	remote   string // default 127.0.0.1
	host     string // default example.com
	headers  []mongrel2.Field
	body     string
	format   mongrel2.HeaderFormat
	window   string // ZMQX_WINDOW, if not empty
	deadline string // ZMQX_DEADLINE, if not empty
	stream   bool   // ZMQX_BODY: stream (the body comes over the control channel)
	confirm  bool   // ZMQX_CONFIRM: ack (start only once the ACK is confirmed)
}

func (f *testFE) frame(conn string, q treq) []byte {
	if q.method == "" {
		q.method = "GET"
	}
	if q.uri == "" {
		q.uri = "/"
	}
	if q.version == "" {
		q.version = "HTTP/1.1"
	}
	if q.scheme == "" {
		q.scheme = "http"
	}
	if q.remote == "" {
		q.remote = "127.0.0.1"
	}
	if q.host == "" {
		q.host = "example.com"
	}
	path, query, _ := strings.Cut(q.uri, "?")
	var e mongrel2.HeaderEncoder
	e.Reset(q.format)
	e.Add("host", q.host)
	for _, h := range q.headers {
		e.AddList(h.Name, h.Values)
	}
	e.Add("PATH", path)
	e.Add("METHOD", q.method)
	e.Add("VERSION", q.version)
	e.Add("URI", q.uri)
	if query != "" {
		e.Add("QUERY", query)
	}
	e.Add("PATTERN", "/")
	e.Add("URL_SCHEME", q.scheme)
	e.Add("REMOTE_ADDR", q.remote)
	if q.window != "" {
		e.Add("ZMQX_WINDOW", q.window)
	}
	if q.deadline != "" {
		e.Add("ZMQX_DEADLINE", q.deadline)
	}
	if q.stream {
		e.Add("ZMQX_BODY", "stream")
	}
	if q.confirm {
		e.Add("ZMQX_CONFIRM", "ack")
	}
	return mongrel2.AppendRequest(nil, f.sender, conn, path, e.Bytes(), []byte(q.body))
}

func (f *testFE) request(conn string, q treq) { f.t.Helper(); f.send(f.frame(conn, q)) }

// addressed sends a request to the worker with identity id over the control
// channel ("REQ <frame>"), as the module does for a pinned session.
func (f *testFE) addressed(id, conn string, q treq) {
	f.t.Helper()
	f.ctlSend(id, "REQ "+string(f.frame(conn, q)))
}

// deadlineIn is a ZMQX_DEADLINE value d from now.
func deadlineIn(d time.Duration) string {
	return strconv.FormatInt(time.Now().Add(d).UnixMilli(), 10)
}

// reply is one response as the front end reassembles it from reply frames.
type reply struct {
	resp     *http.Response
	body     []byte
	bodyErr  error
	raw      []byte // every byte of every frame consumed
	frames   [][]byte
	closed   bool // an empty reply (close) was seen
	trailing int  // bytes after the end of the response
}

// connReader presents the reply frames for one connection as a byte stream.
type connReader struct {
	f      *testFE
	conn   string
	cur    []byte
	r      *reply
	closed bool
	err    error
}

func (c *connReader) Read(p []byte) (int, error) {
	for len(c.cur) == 0 {
		if c.closed {
			return 0, io.EOF
		}
		if c.err != nil {
			return 0, c.err
		}
		body, err := c.f.next(c.conn, waitTimeout)
		if err != nil {
			c.err = err
			return 0, err
		}
		c.r.frames = append(c.r.frames, body)
		c.r.raw = append(c.r.raw, body...)
		if len(body) == 0 {
			c.closed, c.r.closed = true, true
			return 0, io.EOF
		}
		c.cur = body
	}
	n := copy(p, c.cur)
	c.cur = c.cur[n:]
	return n, nil
}

// readReply reads one complete HTTP response for conn. prefetched frames
// (already received by the caller) come first.
func (f *testFE) readReply(conn, method string, prefetched ...[]byte) *reply {
	f.t.Helper()
	r := &reply{}
	cr := &connReader{f: f, conn: conn, r: r}
	for _, p := range prefetched {
		r.frames = append(r.frames, p)
		r.raw = append(r.raw, p...)
		cr.cur = append(cr.cur, p...)
	}
	br := bufio.NewReader(cr)
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		f.t.Fatalf("conn %s: reading response: %v (raw %q)", conn, err, r.raw)
	}
	r.resp = resp
	r.body, r.bodyErr = io.ReadAll(resp.Body)
	r.trailing = br.Buffered() + len(cr.cur)
	return r
}

// expectClose reads the next frame for conn and checks that it is the empty
// reply that closes the connection.
func (f *testFE) expectClose(conn string) {
	f.t.Helper()
	body, err := f.next(conn, waitTimeout)
	if err != nil {
		f.t.Fatalf("conn %s: waiting for close: %v", conn, err)
	}
	if len(body) != 0 {
		f.t.Fatalf("conn %s: want empty (close) reply, got %q", conn, body)
	}
}

// running is a worker started by startWorker.
type running struct {
	t      *testing.T
	cancel context.CancelFunc
	errc   chan error
	base   int
	once   sync.Once
	err    error
}

// startWorker runs w.Serve until the test ends (or stop is called) and
// checks that Serve returns and leaves no goroutine behind.
func startWorker(t *testing.T, w *Worker) *running {
	t.Helper()
	if w.Logger == nil {
		w.Logger = testLogger(t)
	}
	r := &running{t: t, errc: make(chan error, 1), base: runtime.NumGoroutine()}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.errc <- w.Serve(ctx) }()
	t.Cleanup(func() {
		if err := r.stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return r
}

// returned reports (without waiting) whether Serve has returned.
func (r *running) returned() bool {
	select {
	case err := <-r.errc:
		r.errc <- err
		return true
	default:
		return false
	}
}

// stop cancels Serve's context, waits for Serve to return and checks for
// leaked goroutines. Call it from the test goroutine.
func (r *running) stop() error {
	r.t.Helper()
	r.once.Do(func() {
		r.cancel()
		select {
		case r.err = <-r.errc:
		case <-time.After(waitTimeout):
			r.t.Fatal("Serve did not return after cancel")
		}
		waitGoroutines(r.t, r.base)
	})
	return r.err
}

// waitGoroutines polls until no more goroutines run than before the worker
// started.
func waitGoroutines(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutine leak: %d running, %d before the worker started\n%s",
				runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitUntil polls cond until it holds or the deadline passes.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// recvWithin receives from c or fails the test.
func recvWithin[T any](t *testing.T, c <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(waitTimeout):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// logBuffer collects log output for assertions.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
