package integration

import (
	"testing"
	"time"

	"github.com/zmqbridge/caddy-zmq/internal/wsframe"
)

// TestWebSocketCaddyKeepalive: with the worker's own pings off, Caddy
// pings a quiet client (over HTTPS, between the worker's frames), the
// socket stays open well past Caddy's HTTP read, write and idle timeouts
// and past websocket_idle_timeout as long as the client answers, and a
// client that stops answering is closed with 1001 after the idle timeout.
func TestWebSocketCaddyKeepalive(t *testing.T) {
	const idle = 3 * time.Second
	c, w := startWSChat(t, map[string]string{"HTTP_TIMEOUT": "1s",
		"WS_PING_INTERVAL": "300ms", "WS_IDLE_TIMEOUT": idle.String()})

	t.Run("quiet socket pinged and kept", func(t *testing.T) {
		ws := mustDialWS(t, c, true, "/echo", c.proc, w)
		_ = ws.SetDeadline(time.Now().Add(requestTimeout + 2*idle))
		pings := 0
		for end := time.Now().Add(2 * idle); time.Now().Before(end); {
			b0, p, err := ws.ReadFrame()
			if err != nil {
				t.Fatalf("after %d pings: %v", pings, err)
			}
			if b0 != 0x89 {
				t.Fatalf("got frame %#x %q on a quiet socket, want pings only", b0, p)
			}
			pings++
			if err := ws.WriteFrame(0x8A, p); err != nil {
				t.Fatal(err)
			}
		}
		if err := echoToken(ws, "still here"); err != nil {
			t.Fatalf("after %d pings: %v", pings, err)
		}
	})

	t.Run("silent client closed with 1001", func(t *testing.T) {
		ws := mustDialWS(t, c, true, "/echo", c.proc, w)
		_ = ws.SetDeadline(time.Now().Add(requestTimeout + idle))
		if err := echoToken(ws, "then silence"); err != nil {
			t.Fatal(err)
		}
		for {
			b0, p, err := ws.ReadFrame()
			if err != nil {
				t.Fatalf("no close frame: %v", err)
			}
			if b0 == 0x89 {
				continue // unanswered
			}
			code, reason, err := wsframe.ParseClose(p)
			if b0 != 0x88 || err != nil || code != 1001 || reason != "idle timeout" {
				t.Fatalf("got %#x %q, want close 1001 \"idle timeout\"", b0, p)
			}
			return
		}
	})
}
