package caddyzmq

import (
	"testing"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
)

// wsBenchSession is a session on a browser-like handshake, enough to build
// its messages.
func wsBenchSession() *wsSession {
	r := requestFrom("192.0.2.1:5000", false, "192.0.2.1", map[string][]string{
		"Upgrade": {"websocket"}, "Connection": {"Upgrade"},
		"Sec-Websocket-Key": {"dGhlIHNhbXBsZSBub25jZQ=="}, "Sec-Websocket-Version": {"13"},
		"Origin":     {"http://example.com"},
		"User-Agent": {"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"},
		"Cookie":     {"session=0123456789abcdef"}, "Accept-Language": {"en-US,en;q=0.9"},
	})
	return &wsSession{h: &Handler{Pattern: "/"}, p: &poolRuntime{sender: "bench"}, r: r,
		connID: "123", ip: "192.0.2.1", path: "/p"}
}

// BenchmarkWebSocketMessage: building the WEBSOCKET request for one small
// client message, the per-message cost on Caddy's side besides I/O.
func BenchmarkWebSocketMessage(b *testing.B) {
	s := wsBenchSession()
	payload := make([]byte, 64)
	b.ReportAllocs()
	for b.Loop() {
		requestFrames.put(s.message("WEBSOCKET", 0x81, payload))
	}
}

// WEBSOCKET messages carry the handshake's headers with METHOD and FLAGS,
// whether or not their encoding is reused.
func TestWebSocketMessageHeaders(t *testing.T) {
	s := wsBenchSession()
	for _, flags := range []byte{0x81, 0x82, 0x81, 0x89} {
		buf := s.message("WEBSOCKET", flags, []byte("x"))
		req, err := mongrel2.ParseRequest(*buf)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{"METHOD": "WEBSOCKET", "FLAGS": "0x" + string("0123456789ABCDEF"[flags>>4]) + string("0123456789ABCDEF"[flags&15]),
			"upgrade": "websocket", "origin": "http://example.com", "PATH": "/p"}
		for k, v := range want {
			if got := req.Header(k); got != v {
				t.Errorf("flags %#x: header %s = %q, want %q", flags, k, got, v)
			}
		}
		if string(req.Body) != "x" || req.ConnID != "123" {
			t.Errorf("flags %#x: body %q conn %q", flags, req.Body, req.ConnID)
		}
		requestFrames.put(buf)
	}
}
