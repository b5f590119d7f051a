package caddyzmq

import (
	"errors"
	"net"
	"os"
	"syscall"
	"time"
)

// A worker's frame for a WebSocket is written to the client by the
// goroutine that received it from the reply socket, when that cannot block
// and keeps the frames in order; otherwise it is queued for the socket's
// relay goroutine as before. Handing each small frame to the relay
// goroutine costs a goroutine wake-up, often another thread's, per
// message.
//
// Cannot block: the write is one non-blocking write(2) on the client's
// socket, and what the kernel does not take at once is queued for the
// relay. In order: only while nothing is queued for the relay and the
// relay is not writing (it holds writeMu from taking frames until they are
// written).
//
// Only plain TCP connections: crypto/tls has no non-blocking write. A
// direct TLS write can only be guarded (free send buffer as SO_MEMINFO
// counts it, a short write deadline), and the kernel may still make it
// wait under memory pressure, holding up every socket's replies meanwhile;
// for a few µs of Caddy's CPU per small message and no more messages/s
// (docs/performance-log.md) that was not worth it. TLS connections,
// and HTTP/2 and HTTP/3 streams, are written by the relay.

// wsDirect writes frames to a plain TCP client connection without
// blocking.
type wsDirect struct {
	rc syscall.RawConn
}

// newWSDirect returns the direct writer of conn, or nil when there can be
// none (TLS, an HTTP/2 or HTTP/3 stream, a connection a listener wrapper
// wrapped).
func newWSDirect(conn wsConn) *wsDirect {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	return &wsDirect{rc: rc}
}

// write writes what the kernel takes of b now; a short count is not an
// error.
func (d *wsDirect) write(b []byte) (int, error) {
	var n int
	var werr error
	err := d.rc.Write(func(fd uintptr) bool {
		for n < len(b) {
			m, err := syscall.Write(int(fd), b[n:])
			if err == syscall.EINTR {
				continue
			}
			if err != nil || m <= 0 {
				if err != nil && !errors.Is(err, syscall.EAGAIN) {
					werr = err
				}
				break
			}
			n += m
		}
		return true // never wait for the socket: the relay does
	})
	if err != nil {
		return n, err
	}
	return n, werr
}

// writeDirect writes body to the client if it can now; it reports how many
// bytes it wrote (the caller queues the rest) and whether the relay
// goroutine must be woken (credit owed, or a write error to end on).
// Called by exchange.deliver with the exchange's lock held and nothing
// queued.
func (s *wsSession) writeDirect(body []byte) (n int, wake bool) {
	if !s.writeMu.TryLock() {
		return 0, false
	}
	defer s.writeMu.Unlock()
	if s.directOff {
		return 0, false
	}
	n, err := s.direct.write(body)
	if n == 0 && errors.Is(err, os.ErrDeadlineExceeded) {
		// The deadline the relay set for its last write (the idle
		// timeout) has passed since: it is not this write's, which cannot
		// wait. The relay sets its own again before it writes.
		_ = s.conn.SetWriteDeadline(time.Time{})
		n, err = s.direct.write(body)
	}
	if n > 0 {
		s.frames.Write(body[:n])
		s.owed.Add(int64(n))
		s.t.wsDirectFrames.Add(1)
	}
	if err != nil {
		// The relay finds the connection broken when it writes the rest
		// of body, queued.
		s.directOff = true
		return n, true
	}
	// Credit goes to the worker that took the handshake, once known
	// (ex.mu is held: ex.worker may be read).
	return n, s.t.control != nil && s.ex.worker != "" && s.owed.Load() >= int64(s.h.ReplyWindow/4)
}

// endDirect stops direct writes: from here on only the relay writes, and
// the close frame it may send comes after everything written.
func (s *wsSession) endDirect() {
	s.writeMu.Lock()
	s.directOff = true
	s.writeMu.Unlock()
}
