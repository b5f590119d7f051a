package caddyzmq

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	zmq "github.com/pebbe/zmq4"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/wsclient"
	"github.com/zmqbridge/caddy-zmq/internal/wsframe"
	"github.com/zmqbridge/caddy-zmq/workerkit"
)

// m2Echo answers as Mongrel2's examples/ws/python/echo.py does: the raw
// 101 with the accept key it was given, data and close frames echoed (an
// empty reply after the close), pings answered with pongs. The text "bye"
// makes it end the connection with an empty reply.
func m2Echo(r *mongrel2.Request) [][]byte {
	switch r.Header("METHOD") {
	case "WEBSOCKET_HANDSHAKE":
		return [][]byte{[]byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Accept: " + string(r.Body) + "\r\n\r\n")}
	case "WEBSOCKET":
		flags, err := strconv.ParseUint(r.Header("FLAGS"), 0, 8)
		if err != nil {
			return [][]byte{nil}
		}
		op := byte(flags) & 0x0F
		switch {
		case op == wsframe.OpClose:
			return [][]byte{wsframe.AppendFrame(nil, op, r.Body), nil}
		case op == wsframe.OpPing:
			return [][]byte{wsframe.AppendFrame(nil, wsframe.OpPong, r.Body)}
		case string(r.Body) == "bye":
			return [][]byte{nil}
		}
		return [][]byte{wsframe.AppendFrame(nil, op, r.Body)}
	}
	return nil
}

// dialRaw opens a TCP connection to env's server, closed at the test's
// end, with testDeadline on it; it returns it and the server's host.
func dialRaw(t *testing.T, env *testEnv) (net.Conn, string) {
	t.Helper()
	u, _ := url.Parse(env.srv.URL)
	c, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(testDeadline))
	return c, u.Host
}

// readUntilFrame reads frames until one with first byte b0 and payload
// want (Caddy's pings may come before it).
func readUntilFrame(t *testing.T, ws *wsclient.Conn, b0 byte, want string) {
	t.Helper()
	for {
		got, p, err := ws.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if got == b0 && string(p) == want {
			return
		}
	}
}

func dialWS(t *testing.T, env *testEnv, path string) *wsclient.Conn {
	t.Helper()
	c, host := dialRaw(t, env)
	ws, _, err := wsclient.Handshake(c, host, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return ws
}

func TestWebSocketMongrel2Protocol(t *testing.T) {
	env := newTestEnv(t, func(h *Handler) { h.WebSocketMaxMessage = 1 << 10 })
	fw := startFakeWorker(t, env.reqEP, env.repEP, func(r *mongrel2.Request) [][]byte {
		if r.Path == "/__ready" {
			return okReply("ok")
		}
		return m2Echo(r)
	})
	env.waitForWorker(t)
	drain := func() {
		for len(fw.seen) > 0 {
			<-fw.seen
		}
	}
	drain()
	ws := dialWS(t, env, "/chat?room=1")

	hs := <-fw.seen
	for _, kv := range [][2]string{{"METHOD", "WEBSOCKET_HANDSHAKE"}, {"PATH", "/chat"}, {"URI", "/chat?room=1"},
		{"upgrade", "websocket"}, {"connection", "Upgrade"}, {"sec-websocket-version", "13"}} {
		if got := hs.Header(kv[0]); got != kv[1] {
			t.Errorf("handshake header %s = %q, want %q", kv[0], got, kv[1])
		}
	}
	if want := wsframe.AcceptKey(hs.Header("sec-websocket-key")); string(hs.Body) != want {
		t.Errorf("handshake body %q, want the accept key %q", hs.Body, want)
	}

	// Fragments are reassembled into one WEBSOCKET message; a ping in
	// between goes first.
	for _, f := range []struct {
		flags byte
		p     string
	}{{0x01, "hel"}, {0x89, "pi"}, {0x00, "l"}, {0x80, "o"}} {
		if err := ws.WriteFrame(f.flags, []byte(f.p)); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []struct {
		flags string
		body  string
		reply byte
	}{{"0x89", "pi", 0x8A}, {"0x81", "hello", 0x81}} {
		m := <-fw.seen
		if m.Header("METHOD") != "WEBSOCKET" || m.Header("FLAGS") != want.flags || string(m.Body) != want.body || m.ConnID != hs.ConnID {
			t.Fatalf("worker got %s FLAGS=%s %q on %s, want WEBSOCKET %s %q on %s",
				m.Header("METHOD"), m.Header("FLAGS"), m.Body, m.ConnID, want.flags, want.body, hs.ConnID)
		}
		b0, p, err := ws.ReadFrame()
		if err != nil || b0 != want.reply || string(p) != want.body {
			t.Fatalf("client got %#x %q %v, want %#x %q", b0, p, err, want.reply, want.body)
		}
	}
	// Binary of a 16-bit length, unchanged.
	bin := bytes.Repeat([]byte{0, 0xff}, 200)
	if err := ws.WriteFrame(0x82, bin); err != nil {
		t.Fatal(err)
	}
	if b0, p, err := ws.ReadFrame(); err != nil || b0 != 0x82 || !bytes.Equal(p, bin) {
		t.Fatalf("binary echo: %#x %d bytes %v", b0, len(p), err)
	}
	// Close: echoed by the worker, then its empty reply ends the TCP
	// connection.
	if err := ws.WriteFrame(0x88, []byte{0x03, 0xE8}); err != nil {
		t.Fatal(err)
	}
	if code, err := ws.ReadClose(); err != nil || code != 1000 {
		t.Fatalf("close echo: %d %v", code, err)
	}
	if _, _, err := ws.ReadFrame(); err == nil {
		t.Fatal("connection still open after the worker's empty reply")
	}
}

func TestWebSocketLimitsAndErrors(t *testing.T) {
	env := newTestEnv(t, func(h *Handler) { h.WebSocketMaxMessage = 1 << 10 })
	fw := startFakeWorker(t, env.reqEP, env.repEP, func(r *mongrel2.Request) [][]byte {
		if r.Path == "/__ready" {
			return okReply("ok")
		}
		if r.Path == "/refuse" && r.Header("METHOD") == "WEBSOCKET_HANDSHAKE" {
			return [][]byte{[]byte("HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\n\r\nno\n")}
		}
		return m2Echo(r)
	})
	env.waitForWorker(t)
	tests := []struct {
		name string
		send func(*wsclient.Conn) error
		code int
	}{
		{"message over the limit", func(ws *wsclient.Conn) error { return ws.WriteFrame(0x82, make([]byte, 1025)) }, 1009},
		{"fragments over the limit", func(ws *wsclient.Conn) error {
			_ = ws.WriteFrame(0x02, make([]byte, 600))
			return ws.WriteFrame(0x80, make([]byte, 600))
		}, 1009},
		{"unmasked frame", func(ws *wsclient.Conn) error {
			_, err := ws.Conn.Write(wsframe.AppendFrame(nil, wsframe.OpText, []byte("x")))
			return err
		}, 1002},
		{"stray continuation", func(ws *wsclient.Conn) error { return ws.WriteFrame(0x80, []byte("x")) }, 1002},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ws := dialWS(t, env, "/ws")
			if err := tc.send(ws); err != nil {
				t.Fatal(err)
			}
			if code, err := ws.ReadClose(); err != nil || code != tc.code {
				t.Fatalf("close code %d (%v), want %d", code, err, tc.code)
			}
			// The worker hears that the client is gone.
			deadline := time.After(testDeadline)
			for {
				select {
				case m := <-fw.seen:
					if m.IsDisconnect() {
						return
					}
				case <-deadline:
					t.Fatal("no disconnect notice")
				}
			}
		})
	}
	t.Run("worker refuses the upgrade", func(t *testing.T) {
		u, _ := url.Parse(env.srv.URL)
		c, err := net.Dial("tcp", u.Host)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, resp, err := wsclient.Handshake(c, u.Host, "/refuse", nil)
		if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Fatalf("got %v %v, want 403", resp, err)
		}
	})
}

func TestIsWebSocketUpgrade(t *testing.T) {
	base := func() *http.Request {
		r, _ := http.NewRequest("GET", "http://x/", nil)
		r.Header.Set("Upgrade", "WebSocket")
		r.Header.Set("Connection", "keep-alive, Upgrade")
		r.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
		r.Header.Set("Sec-WebSocket-Version", "13")
		return r
	}
	tests := []struct {
		name   string
		modify func(*http.Request)
		want   bool
	}{
		{"upgrade", func(*http.Request) {}, true},
		{"no key", func(r *http.Request) { r.Header.Del("Sec-WebSocket-Key") }, false},
		{"no version", func(r *http.Request) { r.Header.Del("Sec-WebSocket-Version") }, false},
		{"other upgrade", func(r *http.Request) { r.Header.Set("Upgrade", "h2c") }, false},
		{"connection without upgrade", func(r *http.Request) { r.Header.Set("Connection", "keep-alive") }, false},
		{"no host", func(r *http.Request) { r.Host = "" }, false},
		{"HTTP/2", func(r *http.Request) { r.ProtoMajor, r.ProtoMinor = 2, 0 }, false},
	}
	for _, tc := range tests {
		r := base()
		tc.modify(r)
		if got := isWebSocketUpgrade(r); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// Validate refuses an idle timeout that would close a healthy quiet
// client before Caddy pinged it; either may be off.
func TestValidateWebSocketKeepalive(t *testing.T) {
	tests := []struct {
		name       string
		ping, idle time.Duration
		ok         bool
	}{
		{"defaults", DefaultWebSocketPingInterval, DefaultWebSocketIdleTimeout, true},
		{"idle shorter than ping", 30 * time.Second, 10 * time.Second, false},
		{"idle equal to ping", 30 * time.Second, 30 * time.Second, false},
		{"pings off", -1, 10 * time.Second, true},
		{"idle off", 30 * time.Second, -1, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := Handler{ReplyWindow: DefaultReplyWindow, WebSocketPingInterval: caddy.Duration(tc.ping), WebSocketIdleTimeout: caddy.Duration(tc.idle)}
			if err := h.Validate(); (err == nil) != tc.ok {
				t.Fatalf("Validate: %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

// Caddy's own keepalive: a quiet client is pinged between the worker's
// frames and its pong stays with Caddy; a client that answers nothing is
// closed with 1001 after the idle timeout and the worker hears it; a
// worker frame half written when the timeout strikes gets no ping and no
// close frame spliced into it, only a TCP close.
func TestWebSocketKeepalive(t *testing.T) {
	// idle is long enough that a stalled test machine does not miss it
	// between a ping and its pong.
	const ping, idle = 100 * time.Millisecond, 1500 * time.Millisecond
	env := newTestEnv(t, func(h *Handler) {
		h.WebSocketPingInterval = caddy.Duration(ping)
		h.WebSocketIdleTimeout = caddy.Duration(idle)
	})
	halfFrame := append(wsframe.AppendHeader(nil, 0x82, 100), make([]byte, 10)...)
	fw := startFakeWorker(t, env.reqEP, env.repEP, func(r *mongrel2.Request) [][]byte {
		if r.Path == "/__ready" {
			return okReply("ok")
		}
		if r.Header("METHOD") == "WEBSOCKET" && string(r.Body) == "half" {
			return [][]byte{halfFrame}
		}
		return m2Echo(r)
	})
	env.waitForWorker(t)
	// nextMessage is the worker's next message of the socket connID
	// ("" for any socket's handshake).
	nextMessage := func(t *testing.T, connID string) *mongrel2.Request {
		t.Helper()
		for {
			select {
			case m := <-fw.seen:
				if connID == "" && m.Header("METHOD") == "WEBSOCKET_HANDSHAKE" || connID != "" && m.ConnID == connID {
					return m
				}
			case <-time.After(testDeadline):
				t.Fatal("the worker got nothing")
			}
		}
	}
	open := func(t *testing.T) (*wsclient.Conn, string) {
		ws := dialWS(t, env, "/ws")
		return ws, nextMessage(t, "").ConnID
	}

	t.Run("quiet client pinged, pong kept", func(t *testing.T) {
		ws, id := open(t)
		// Answering every ping keeps the socket open well past idle.
		deadline := time.Now().Add(2 * idle)
		pings := 0
		for time.Now().Before(deadline) {
			b0, p, err := ws.ReadFrame()
			if err != nil {
				t.Fatalf("after %d pings: %v", pings, err)
			}
			if b0 != 0x89 || !bytes.Equal(p, keepalivePayload) {
				t.Fatalf("got %#x %q, want Caddy's ping", b0, p)
			}
			pings++
			if err := ws.WriteFrame(0x8A, p); err != nil {
				t.Fatal(err)
			}
		}
		if err := ws.WriteText("still open"); err != nil {
			t.Fatal(err)
		}
		if m := nextMessage(t, id); m.Header("FLAGS") != "0x81" || string(m.Body) != "still open" {
			t.Fatalf("worker got FLAGS=%s %q, want the text (pongs to Caddy's pings are not passed on)", m.Header("FLAGS"), m.Body)
		}
		readUntilFrame(t, ws, 0x81, "still open")
	})

	t.Run("silent client closed with 1001", func(t *testing.T) {
		ws, id := open(t)
		for {
			b0, p, err := ws.ReadFrame()
			if err != nil {
				t.Fatalf("no close frame: %v", err)
			}
			if b0 == 0x89 {
				continue // pings, unanswered
			}
			code, reason, err := wsframe.ParseClose(p)
			if b0 != 0x88 || err != nil || code != 1001 || reason != "idle timeout" {
				t.Fatalf("got %#x %q, want close 1001 \"idle timeout\"", b0, p)
			}
			break
		}
		for m := nextMessage(t, id); !m.IsDisconnect(); m = nextMessage(t, id) {
		}
	})

	t.Run("half-written frame: TCP close only", func(t *testing.T) {
		ws, _ := open(t)
		if err := ws.WriteText("half"); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(ws.Raw()) // until Caddy closes the connection
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, halfFrame) {
			t.Fatalf("client got % x, want only the worker's half frame % x", got, halfFrame)
		}
	})
}

// A large message sent as one frame is read straight into its request
// (websocket_place.go); it reaches the worker as the same request as when
// it comes in fragments (reassembled, then copied), and at the limit too.
func TestWebSocketPlacedMessages(t *testing.T) {
	const limit = 3 * wsPlaceMin
	env := newTestEnv(t, func(h *Handler) { h.WebSocketMaxMessage = limit })
	fw := startFakeWorker(t, env.reqEP, env.repEP, func(r *mongrel2.Request) [][]byte {
		if r.Path == "/__ready" {
			return okReply("ok")
		}
		return m2Echo(r)
	})
	env.waitForWorker(t)
	for len(fw.seen) > 0 {
		<-fw.seen
	}
	ws := dialWS(t, env, "/big")
	<-fw.seen // the handshake
	payload := func(n int) []byte {
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(i * 7)
		}
		return p
	}
	type sent struct {
		name   string
		frames [][]byte // flags byte first
	}
	big := payload(wsPlaceMin + 5)
	frag := func(flags byte, p []byte) []byte { return append([]byte{flags}, p...) }
	var first *mongrel2.Request
	for _, tc := range []sent{
		{"one frame", [][]byte{frag(0x82, big)}},
		{"fragments", [][]byte{frag(0x02, big[:1000]), frag(0x80, big[1000:])}},
		{"one frame again", [][]byte{frag(0x82, big)}},
		{"just below placing", [][]byte{frag(0x82, big[:wsPlaceMin-1])}},
		{"at the limit", [][]byte{frag(0x82, payload(limit))}},
	} {
		var whole []byte
		for _, f := range tc.frames {
			if err := ws.WriteFrame(f[0], f[1:]); err != nil {
				t.Fatal(err)
			}
			whole = append(whole, f[1:]...)
		}
		m := <-fw.seen
		if m.Header("METHOD") != "WEBSOCKET" || m.Header("FLAGS") != "0x82" || !bytes.Equal(m.Body, whole) {
			t.Fatalf("%s: worker got %s FLAGS=%s, %d bytes; want WEBSOCKET 0x82, %d bytes", tc.name, m.Header("METHOD"), m.Header("FLAGS"), len(m.Body), len(whole))
		}
		if first == nil {
			first = m
		} else if m.Sender != first.Sender || m.ConnID != first.ConnID || m.Path != first.Path || !reflect.DeepEqual(m.Headers, first.Headers) {
			t.Fatalf("%s: request head %s %s %s %v, want %s %s %s %v", tc.name, m.Sender, m.ConnID, m.Path, m.Headers, first.Sender, first.ConnID, first.Path, first.Headers)
		}
		if b0, p, err := ws.ReadFrame(); err != nil || b0 != 0x82 || !bytes.Equal(p, whole) {
			t.Fatalf("%s: echo %#x, %d bytes, %v", tc.name, b0, len(p), err)
		}
	}
	// Over the limit: 1009, and the worker hears the client is gone.
	if err := ws.WriteFrame(0x82, payload(limit+1)); err != nil {
		t.Fatal(err)
	}
	if code, err := ws.ReadClose(); err != nil || code != wsframe.CloseMessageTooBig {
		t.Fatalf("over the limit: close %d, %v", code, err)
	}
}

// A worker's 101 may come in several messages: Caddy gathers its head
// before it decides (a piece shorter than the status line was taken for a
// refusal) and follows the worker's frames after it (its pings go between
// them, so a head it lost track of meant no pings for the socket's life).
func TestWebSocketHandshakeInPieces(t *testing.T) {
	env := newTestEnv(t, func(h *Handler) {
		h.WebSocketPingInterval = caddy.Duration(50 * time.Millisecond)
		h.WebSocketIdleTimeout = caddy.Duration(testDeadline)
	})
	var firstPiece atomic.Int64 // bytes of the 101 in the answer; the rest comes later
	fw := startFakeWorker(t, env.reqEP, env.repEP, func(r *mongrel2.Request) [][]byte {
		if r.Path == "/__ready" {
			return okReply("ok")
		}
		if r.Header("METHOD") == "WEBSOCKET_HANDSHAKE" {
			return [][]byte{m2Echo(r)[0][:firstPiece.Load()]}
		}
		return m2Echo(r)
	})
	env.waitForWorker(t)
	for name, split := range map[string]int64{"inside the status line": 5, "inside the headers": 40} {
		t.Run(name, func(t *testing.T) {
			firstPiece.Store(split)
			conn, host := dialRaw(t, env)
			type dialed struct {
				ws  *wsclient.Conn
				err error
			}
			got := make(chan dialed, 1)
			go func() {
				ws, _, err := wsclient.Handshake(conn, host, "/ws", nil)
				got <- dialed{ws, err}
			}()
			var hs *mongrel2.Request
			for hs == nil {
				select {
				case m := <-fw.seen:
					if m.Header("METHOD") == "WEBSOCKET_HANDSHAKE" {
						hs = m
					}
				case <-time.After(testDeadline):
					t.Fatal("no handshake reached the worker")
				}
			}
			// The rest, once Caddy has taken the first piece (otherwise
			// both could be taken at once).
			id, _ := mongrel2.ParseUint([]byte(hs.ConnID))
			tr := env.h.pools[0].transport
			pollUntil(t, "Caddy to take the first piece", func() bool {
				ex := tr.lookup(id)
				if ex == nil {
					return false
				}
				ex.mu.Lock()
				defer ex.mu.Unlock()
				return ex.answered && len(ex.queue) == 0
			})
			fw.out <- mongrel2.AppendReplyOne(nil, hs.Sender, hs.ConnID, m2Echo(hs)[0][split:])
			d := <-got
			if d.err != nil {
				t.Fatalf("handshake: %v", d.err)
			}
			if b0, p, err := d.ws.ReadFrame(); err != nil || b0 != 0x89 || !bytes.Equal(p, keepalivePayload) {
				t.Fatalf("got %#x %q %v, want Caddy's ping of a quiet client", b0, p, err)
			}
			if err := d.ws.WriteText("hi"); err != nil {
				t.Fatal(err)
			}
			for {
				b0, p, err := d.ws.ReadFrame()
				if err != nil {
					t.Fatalf("no echo: %v", err)
				}
				if b0 == 0x81 && string(p) == "hi" {
					break
				}
			}
		})
	}
}

// A handshake taken by a worker that then answers nothing is taken back
// when the worker is found hung, and answered by another worker, as an
// idempotent request is (before, the client waited for reply_timeout).
func TestWebSocketHandshakeRetriedFromHungWorker(t *testing.T) {
	env, ctlEP := newHungTestEnv(t)
	wsNamed := func(h *hangable) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !workerkit.IsWebSocketUpgrade(r) {
				h.ServeHTTP(w, r)
				return
			}
			if h.hold(r) {
				return
			}
			c, err := workerkit.AcceptWebSocket(w, r, nil)
			if err != nil {
				return
			}
			_ = c.WriteMessage(workerkit.TextMessage, []byte(h.name))
			for {
				if _, _, err := c.ReadMessage(); err != nil {
					return
				}
			}
		})
	}
	a, b := &hangable{name: "A"}, &hangable{name: "B"}
	startHangablePair(t, env, ctlEP, a, b, wsNamed)
	a.hung.Store(true)
	for i := 0; a.started.Load() == 0; i++ {
		if i == 8 {
			t.Fatal("the hung worker took no handshake: nothing was tested")
		}
		ws := dialWS(t, env, "/ws")
		if b0, p, err := ws.ReadFrame(); err != nil || b0 != 0x81 || string(p) != "B" {
			t.Fatalf("socket %d: got %#x %q %v, want B's greeting", i, b0, p, err)
		}
		_ = ws.WriteFrame(0x88, []byte{0x03, 0xE8})
	}
	pollUntil(t, "the hung handler to see its handshake taken back", func() bool {
		return a.released.Load() == a.started.Load()
	})
}

// A WebSocket's messages go out on the request socket from its reader while
// the socket's owner is idle, but never ahead of one of its messages still
// in the owner's queue.
func TestWebSocketDirectSendKeepsOrder(t *testing.T) {
	push, _ := zmq.NewSocket(zmq.PUSH)
	pull, _ := zmq.NewSocket(zmq.PULL)
	defer push.Close()
	defer pull.Close()
	ep := "inproc://direct-send-order"
	if err := pull.Bind(ep); err != nil {
		t.Fatal(err)
	}
	if err := push.Connect(ep); err != nil {
		t.Fatal(err)
	}
	tr := &transport{out: make(chan outMsg, 8), quit: make(chan struct{}), reqSock: push}
	s := &wsSession{t: tr}
	msg := func(b string) outMsg {
		buf := requestFrames.get()
		*buf = append((*buf)[:0], b...)
		return outMsg{buf: buf}
	}
	received := func() string {
		b, err := pull.RecvBytes(zmq.DONTWAIT)
		if err != nil {
			return ""
		}
		return string(b)
	}
	tr.sendMu.Lock() // the owner is sending
	if err := s.deliver("", ctlMsg{}, msg("1")); err != nil {
		t.Fatal(err)
	}
	tr.sendMu.Unlock()
	if err := s.deliver("", ctlMsg{}, msg("2")); err != nil { // behind "1", though the socket is free
		t.Fatal(err)
	}
	if len(tr.out) != 2 || received() != "" {
		t.Fatalf("%d queued, want both messages queued and none sent", len(tr.out))
	}
	for range 2 { // the owner sends them
		m := <-tr.out
		tr.send(push, m)
	}
	if err := s.deliver("", ctlMsg{}, msg("3")); err != nil { // nothing queued: direct
		t.Fatal(err)
	}
	if len(tr.out) != 0 {
		t.Fatal("a message queued while the socket was free and nothing waited")
	}
	for _, want := range []string{"1", "2", "3"} {
		var got string
		pollUntil(t, "message "+want, func() bool { got = received(); return got != "" })
		if got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
}

// A worker that ends the connection (an empty reply) right after its
// handshake reply: after a whole 101 the client gets the 101, then the end;
// inside the reply's head, 502 (not the half head).
func TestWebSocketWorkerEndsAtHandshake(t *testing.T) {
	for name, tc := range map[string]struct {
		reply  func(*mongrel2.Request) []byte
		status string // "" for a 101
	}{
		"after its 101":   {func(r *mongrel2.Request) []byte { return m2Echo(r)[0] }, ""},
		"inside its head": {func(*mongrel2.Request) []byte { return []byte("HTTP/1.1 101 Switching Protocols\r\nUpgr") }, "502"},
	} {
		t.Run(name, func(t *testing.T) {
			env := newTestEnv(t, nil)
			startFakeWorker(t, env.reqEP, env.repEP, func(r *mongrel2.Request) [][]byte {
				if r.Path == "/__ready" {
					return okReply("ok")
				}
				if r.Header("METHOD") == "WEBSOCKET_HANDSHAKE" {
					return [][]byte{tc.reply(r), nil}
				}
				return nil
			})
			env.waitForWorker(t)
			conn, host := dialRaw(t, env)
			ws, _, err := wsclient.Handshake(conn, host, "/ws", nil)
			if tc.status != "" {
				if err == nil || !strings.Contains(err.Error(), tc.status) {
					t.Fatalf("handshake: %v, want %s", err, tc.status)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			_, _, err = ws.ReadFrame()
			if ne, ok := err.(net.Error); err == nil || ok && ne.Timeout() {
				t.Fatalf("read %v, want the connection closed", err)
			}
		})
	}
}

// TestWebSocketDirectWritesInOrder floods a client whose socket buffers
// (and Caddy's) are small: the reply socket's goroutine writes frames to
// it directly (websocket_direct.go) until the kernel takes no more, part
// of a frame at the end, and the relay goroutine then writes the rest. The
// client must get every frame whole and in order, with Caddy's pings
// (every 20 ms meanwhile) only between them; the same over TLS, which
// only the relay writes.
func TestWebSocketDirectWritesInOrder(t *testing.T) {
	for _, tc := range []struct {
		name         string
		tls          bool
		frames, size int
	}{
		{"tcp", false, 300, 64 << 10},
		{"tls", true, 800, 4000}, // fewer than the fake worker PUB's high-water mark
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := floodInOrder(t, tc.tls, tc.frames, tc.size)
			direct := env.h.pools[0].transport.wsDirectFrames.Load()
			// A frame that finds the relay writing (one of Caddy's pings)
			// is queued, and those behind it while the queue lasts: a
			// flood on plain TCP may, rarely, be relayed whole. Another
			// flood then must write some directly.
			for try := 1; try < 3 && !tc.tls && direct == 0; try++ {
				t.Logf("flood %d: no frame written directly; again", try)
				env = floodInOrder(t, tc.tls, tc.frames, tc.size)
				direct = env.h.pools[0].transport.wsDirectFrames.Load()
			}
			if tc.tls != (direct == 0) {
				t.Errorf("%d frames written directly", direct)
			}
		})
	}
}

func floodInOrder(t *testing.T, useTLS bool, frames, size int) *testEnv {
	env := newTestEnv(t, func(h *Handler) {
		h.WebSocketPingInterval = caddy.Duration(20 * time.Millisecond)
		h.WebSocketIdleTimeout = caddy.Duration(time.Minute)
	})
	// Small socket buffers on both sides fill at once, so that Caddy's
	// writes come up short.
	smallBuf := func(opt int) func(_, _ string, c syscall.RawConn) error {
		return func(_, _ string, c syscall.RawConn) error {
			return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, opt, 4096) })
		}
	}
	env.srv.Close()
	env.srv = httptest.NewUnstartedServer(serveLikeCaddy(env.h))
	ln, err := (&net.ListenConfig{Control: smallBuf(syscall.SO_SNDBUF)}).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	env.srv.Listener.Close()
	env.srv.Listener = ln
	if useTLS {
		env.srv.StartTLS()
	} else {
		env.srv.Start()
	}
	t.Cleanup(env.srv.Close)
	asked := make(chan struct{})
	frame := func(i int) []byte {
		p := bytes.Repeat([]byte{byte(i)}, size)
		binary.BigEndian.PutUint32(p, uint32(i))
		return wsframe.AppendFrame(nil, wsframe.OpBinary, p)
	}
	startFakeWorker(t, env.reqEP, env.repEP, func(r *mongrel2.Request) [][]byte {
		switch {
		case r.Path == "/__ready":
			return okReply("ok")
		case r.Header("METHOD") == "WEBSOCKET" && string(r.Body) == "flood":
			out := make([][]byte, frames)
			for i := range out {
				out[i] = frame(i)
			}
			close(asked)
			return out
		}
		return m2Echo(r)
	})
	u, _ := url.Parse(env.srv.URL)
	d := net.Dialer{Control: smallBuf(syscall.SO_RCVBUF)}
	var c net.Conn
	if useTLS {
		c, err = tls.DialWithDialer(&d, "tcp", u.Host, env.srv.Client().Transport.(*http.Transport).TLSClientConfig)
	} else {
		env.waitForWorker(t)
		c, err = d.Dial("tcp", u.Host)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(testDeadline))
	ws, _, err := wsclient.Handshake(c, u.Host, "/flood", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ws.WriteFrame(0x82, []byte("flood")); err != nil {
		t.Fatal(err)
	}
	<-asked
	pings := 0
	for i := 0; i < frames; {
		b0, p, err := ws.ReadFrame()
		if err != nil {
			t.Fatalf("frame %d: %v (after %d pings)", i, err, pings)
		}
		if b0 == 0x89 {
			pings++
			continue
		}
		if want := frame(i); b0 != want[0] || !bytes.Equal(p, want[len(want)-size:]) {
			t.Fatalf("frame %d: got %#x with %d bytes starting %x, want frame %d", i, b0, len(p), p[:min(8, len(p))], i)
		}
		i++
	}
	t.Logf("%d frames of %d bytes in order, %d pings between them", frames, size, pings)
	return env
}

// A socket whose replies all go the direct way keeps going that way past
// websocket_idle_timeout: the write deadline the relay set for its last
// write (here the 101's) passes meanwhile, and must not end direct writes.
func TestWebSocketDirectWritesOutliveIdleDeadline(t *testing.T) {
	const idle = 300 * time.Millisecond
	env := newTestEnv(t, func(h *Handler) {
		h.WebSocketPingInterval = caddy.Duration(100 * time.Millisecond)
		h.WebSocketIdleTimeout = caddy.Duration(idle)
	})
	fw := startFakeWorker(t, env.reqEP, env.repEP, func(r *mongrel2.Request) [][]byte {
		if r.Path == "/__ready" {
			return okReply("ok")
		}
		return m2Echo(r)
	})
	go func() { // the fake worker records what it gets, and waits when that is full
		for {
			select {
			case <-fw.seen:
			case <-fw.done:
				return
			}
		}
	}()
	env.waitForWorker(t)
	ws := dialWS(t, env, "/echo")
	direct := &env.h.pools[0].transport.wsDirectFrames
	echo := func() {
		t.Helper()
		if err := ws.WriteFrame(0x82, []byte("x")); err != nil {
			t.Fatal(err)
		}
		readUntilFrame(t, ws, 0x82, "x")
	}
	// Echo without pause (so no ping renews the deadline) past twice the
	// idle timeout, then count the direct writes of the next echoes.
	for start := time.Now(); time.Since(start) < 2*idle; {
		echo()
	}
	before := direct.Load()
	for range 20 {
		echo()
	}
	if got := direct.Load() - before; got < 15 {
		t.Errorf("%d of 20 echoes written directly after the idle timeout's deadline passed", got)
	}
}
