package caddyzmq

import (
	"bytes"
	"runtime"
	"testing"
	"time"
	"weak"

	zmq "github.com/pebbe/zmq4"

	"github.com/zmqbridge/caddy-zmq/internal/zmqio"
)

func TestNewFrameClass(t *testing.T) {
	big := frameClasses[bigFrameClass]
	tests := []struct {
		n         int
		wantClass int8
	}{
		{0, 0}, {1, 0}, {512, 0}, {513, 1}, {4 << 10, 1}, {4<<10 + 1, 2},
		{32 << 10, 2}, {32<<10 + 1, 3}, {big, 3}, {big + 1, -1}, {4 << 20, -1},
	}
	for _, tc := range tests {
		f := newFrame(tc.n)
		if f.class != tc.wantClass || len(f.buf) != tc.n || f.refs.Load() != 1 {
			t.Errorf("newFrame(%d): class %d, len %d, refs %d; want class %d, len %d, refs 1",
				tc.n, f.class, len(f.buf), f.refs.Load(), tc.wantClass, tc.n)
		}
		if f.class >= 0 && cap(f.buf) != frameClasses[f.class] {
			t.Errorf("newFrame(%d): cap %d, want the class size %d", tc.n, cap(f.buf), frameClasses[f.class])
		}
		f.release()
	}
}

func TestFrameRefs(t *testing.T) {
	f := newFrame(10)
	f.retain()
	f.retain()
	f.release()
	if n := f.refs.Load(); n != 2 {
		t.Fatalf("refs = %d after 2 retains and 1 release, want 2", n)
	}
	f.release()
	f.release()
	if n := f.refs.Load(); n != 0 {
		t.Fatalf("refs = %d, want 0", n)
	}
	var none *replyFrame
	none.release() // a no-op, as for a body queued without a frame
}

// TestFrameOf: a small part is copied out of the scratch buffer, which is
// kept; a big one takes the scratch buffer, and a fresh one replaces it.
func TestFrameOf(t *testing.T) {
	scratch := getFrame(bigFrameClass, 0)
	small := append(scratch.buf[:0], "HTTP/1.1 200 OK\r\n\r\n"...)
	f, next := frameOf(small, scratch)
	if next != scratch || f == scratch || !bytes.Equal(f.buf, small) || f.class != 0 {
		t.Fatalf("small part: frame %p (class %d, %q), next %p; scratch %p", f, f.class, f.buf, next, scratch)
	}
	n := frameClasses[bigFrameClass-1] + 1
	large := scratch.buf[:n]
	large[n-1] = 'z'
	f, next = frameOf(large, scratch)
	if f != scratch || next == scratch || len(f.buf) != n || f.buf[n-1] != 'z' {
		t.Fatalf("big part: frame %p len %d, next %p; scratch %p", f, len(f.buf), next, scratch)
	}
	if int(next.class) != bigFrameClass || len(next.buf) != 0 || cap(next.buf) != frameClasses[bigFrameClass] {
		t.Fatalf("new scratch: class %d, len %d, cap %d", next.class, len(next.buf), cap(next.buf))
	}
}

// keptMsg receives a part of n bytes without a copy, through a real libzmq
// pair.
func keptMsg(t *testing.T, n int) *zmqio.Msg {
	t.Helper()
	ctx, err := zmq.NewContext()
	if err != nil {
		t.Fatal(err)
	}
	addr := "inproc://kept-frame-" + t.Name()
	rx, _ := ctx.NewSocket(zmq.PULL)
	tx, _ := ctx.NewSocket(zmq.PUSH)
	defer func() { _ = tx.Close(); _ = rx.Close(); _ = ctx.Term() }()
	if err := rx.Bind(addr); err != nil {
		t.Fatal(err)
	}
	if err := tx.Connect(addr); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.SendBytes(bytes.Repeat([]byte{'k'}, n), 0); err != nil {
		t.Fatal(err)
	}
	rcv, err := zmqio.NewReceiver(rx)
	if err != nil {
		t.Fatal(err)
	}
	defer rcv.Close()
	_, m, _, err := rcv.RecvKeep(make([]byte, 1024), keptFrameMin, 0)
	if err != nil || m == nil {
		t.Fatalf("RecvKeep of %d bytes: kept %v, err %v", n, m, err)
	}
	return m
}

// A kept frame's memory is freed by its last release, and, when a
// reference is dropped without one (a request that ended early), once the
// frame is unreachable.
func TestKeptFrameFreed(t *testing.T) {
	t.Run("last release", func(t *testing.T) {
		m := keptMsg(t, keptFrameMin)
		f := keptFrame(m)
		if len(f.buf) != keptFrameMin || f.buf[0] != 'k' {
			t.Fatalf("frame holds %d bytes", len(f.buf))
		}
		f.retain()
		f.release()
		if m.Closed() {
			t.Fatal("freed with a reference left")
		}
		f.release()
		if !m.Closed() {
			t.Fatal("not freed by the last release")
		}
	})
	t.Run("dropped", func(t *testing.T) {
		// zmqio frees a Msg that becomes unreachable (its own test);
		// here nothing may keep the Msg of a dropped frame reachable.
		m := keptMsg(t, 256<<10)
		wm := weak.Make(m)
		f := keptFrame(m)
		f.retain() // a reference that is never released
		m, f = nil, nil
		deadline := time.Now().Add(10 * time.Second)
		for wm.Value() != nil {
			if time.Now().After(deadline) {
				t.Fatal("the message of an unreachable kept frame stays reachable")
			}
			runtime.GC()
			time.Sleep(10 * time.Millisecond)
		}
	})
}
