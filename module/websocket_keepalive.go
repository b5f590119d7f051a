package caddyzmq

import (
	"bytes"
	"io"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/zmqbridge/caddy-zmq/internal/wsframe"
	"github.com/zmqbridge/caddy-zmq/module/internal/httpreply"
)

// Caddy's own ping and idle policy for WebSockets. The worker's replies
// are raw bytes that may end mid-frame, so Caddy follows their frame
// boundaries (wsframe.Boundaries) and puts its pings, and the close frames
// it sends itself (1001, 1011, protocol errors), only between two of the
// worker's frames. Where it cannot (a worker frame half written), a close
// is a TCP close without a close frame, which the client sees as 1006:
// better than a frame spliced into another.

const (
	// DefaultWebSocketPingInterval is how long a client may be quiet
	// before Caddy pings it.
	DefaultWebSocketPingInterval = 30 * time.Second
	// DefaultWebSocketIdleTimeout closes a socket whose client has sent
	// nothing (pongs included) for this long: two unanswered pings.
	DefaultWebSocketIdleTimeout = 60 * time.Second
)

// keepalivePayload marks Caddy's pings; a pong that carries it answers
// one of them and is not passed to the worker.
var keepalivePayload = []byte("caddy-zmq keepalive")

// keepalivePing is the ping frame Caddy sends.
var keepalivePing = wsframe.AppendFrame(nil, wsframe.OpPing, keepalivePayload)

// wsKeepalive is one socket's ping and idle state. heard is written by the
// reader goroutine; the rest belongs to the goroutine relaying replies.
type wsKeepalive struct {
	ping, idle time.Duration // 0: off
	heard      atomic.Int64  // UnixNano of the client's last bytes
	lastPing   time.Time
	timer      *time.Timer
}

func newKeepalive(ping, idle time.Duration) *wsKeepalive {
	k := &wsKeepalive{ping: max(ping, 0), idle: max(idle, 0)}
	k.heard.Store(time.Now().UnixNano())
	return k
}

// start arms the timer; nil when both pings and the idle timeout are off.
func (k *wsKeepalive) start() <-chan time.Time {
	if k.ping == 0 && k.idle == 0 {
		return nil
	}
	k.timer = time.NewTimer(k.wait(time.Now()))
	return k.timer.C
}

func (k *wsKeepalive) stop() {
	if k.timer != nil {
		k.timer.Stop()
	}
}

func (k *wsKeepalive) heardAt() time.Time { return time.Unix(0, k.heard.Load()) }

// wait is the time from now to the next ping or idle deadline.
func (k *wsKeepalive) wait(now time.Time) time.Duration {
	heard := k.heardAt()
	d := time.Duration(1<<63 - 1)
	if k.idle > 0 {
		d = heard.Add(k.idle).Sub(now)
	}
	if k.ping > 0 {
		last := heard
		if k.lastPing.After(last) {
			last = k.lastPing
		}
		d = min(d, last.Add(k.ping).Sub(now))
	}
	return max(d, time.Millisecond)
}

// due says, at now, whether the socket idled out and whether a ping is
// owed, and rearms the timer.
func (k *wsKeepalive) due(now time.Time) (idle, ping bool) {
	heard := k.heardAt()
	if k.idle > 0 && now.Sub(heard) >= k.idle {
		return true, false
	}
	if k.ping > 0 && now.Sub(heard) >= k.ping && now.Sub(k.lastPing) >= k.ping {
		k.lastPing = now
		ping = true
	}
	k.timer.Reset(k.wait(now))
	return false, ping
}

// heardReader notes when the client's bytes arrive, so that a client
// sending one large message slowly is not idle.
type heardReader struct {
	r io.Reader
	k *wsKeepalive
}

func (h *heardReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	if n > 0 {
		h.k.heard.Store(time.Now().UnixNano())
	}
	return n, err
}

// isKeepalivePong reports whether m answers one of Caddy's pings.
func isKeepalivePong(m wsframe.Message) bool {
	return m.Opcode() == wsframe.OpPong && bytes.Equal(m.Payload, keepalivePayload)
}

// followFirst starts following the worker's frames with the bytes of its
// handshake reply: the 101's head, which awaitHandshake gathered whole
// (not for an extended CONNECT, where only frames remain), then frames.
func (s *wsSession) followFirst(first []byte) {
	if !s.extended {
		end := httpreply.HeadEnd(first)
		if end < 0 {
			s.framesUnknown = true
			return
		}
		first = first[end:]
	}
	s.frames.Write(first)
}

// betweenFrames reports whether Caddy may write a frame of its own now.
func (s *wsSession) betweenFrames() bool { return !s.framesUnknown && s.frames.AtBoundary() }

// keepaliveTick pings a quiet client or ends an idle socket.
func (s *wsSession) keepaliveTick() (wsEnd, bool) {
	idle, ping := s.keep.due(time.Now())
	if idle {
		s.h.logger.Debug("websocket idle", zap.String("conn_id", s.connID), zap.Duration("idle_timeout", s.keep.idle))
		return wsEnd{code: wsframe.CloseGoingAway, reason: "idle timeout", notify: true}, true
	}
	if ping {
		if err := s.writeOwn(keepalivePing); err != nil {
			return wsEnd{notify: true, reason: "client write failed"}, true
		}
	}
	return wsEnd{}, false
}

// writeOwn writes a frame of Caddy's own if the worker's last frame is
// whole (checked under writeMu: writeDirect may be writing one).
func (s *wsSession) writeOwn(b []byte) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if !s.betweenFrames() {
		return nil
	}
	return s.writeLocked(b)
}
