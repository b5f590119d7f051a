package caddyzmq

import (
	"runtime"
	"strings"
	"testing"
	"weak"
)

// take must not hand the exchange's own queue to the caller: the handler
// keeps what take returns in its pooled state and passes it to the next
// request's take, so each exchange held the one before it, and a Caddy
// that had served a million requests held a million exchanges.
func TestTakeKeepsNoExchangeAlive(t *testing.T) {
	var spare []queuedFrame
	var first weak.Pointer[exchange]
	for i := range 3 {
		ex := newExchange(uint64(i+1), 0)
		f := newFrame(4)
		copy(f.buf, "body")
		ex.deliver(f.buf, f, true)
		frames, err := ex.take(spare[:0])
		if err != nil || len(frames) != 1 || string(frames[0].body) != "body" {
			t.Fatalf("take = %d frames, %v", len(frames), err)
		}
		frames[0].frame.release()
		spare = frames
		if i == 0 {
			first = weak.Make(ex)
		}
	}
	runtime.GC()
	if first.Value() != nil {
		t.Fatal("a served exchange is still reachable through the next request's spare queue")
	}
	runtime.KeepAlive(spare)
}

func TestTakeEmptiesQueue(t *testing.T) {
	ex := newExchange(1, 1<<10)
	for _, s := range []string{"a", "bb", "ccc"} {
		f := newFrame(len(s))
		copy(f.buf, s)
		ex.deliver(f.buf, f, true)
		f.release() // dispatch's own reference
	}
	frames, err := ex.take(nil)
	if err != nil || len(frames) != 3 || string(frames[2].body) != "ccc" {
		t.Fatalf("take = %d frames, %v", len(frames), err)
	}
	if ex.queuedBytes != 0 || len(ex.queue) != 0 {
		t.Fatalf("queue not emptied: %d frames, %d bytes", len(ex.queue), ex.queuedBytes)
	}
	if again, _ := ex.take(frames[:0]); len(again) != 0 {
		t.Fatalf("second take = %d frames, want 0", len(again))
	}
}

// An exchange that ends with frames still queued (its client left) gives
// them back when it is unregistered: kept frames are libzmq's memory, and
// the garbage collector may not run for minutes on an idle Caddy.
func TestUnregisterReleasesQueued(t *testing.T) {
	tr := &transport{pending: make(map[uint64]*exchange)}
	ex := tr.register(0, false)
	var frames []*replyFrame
	for _, s := range []string{"a", "bb"} {
		f := newFrame(len(s))
		copy(f.buf, s)
		ex.deliver(f.buf, f, true)
		f.release() // dispatch's own reference
		frames = append(frames, f)
	}
	tr.unregister(ex)
	for i, f := range frames {
		if n := f.refs.Load(); n != 0 {
			t.Errorf("frame %d: %d references left after unregister, want 0", i, n)
		}
	}
	if tr.lookup(ex.id) != nil || len(ex.queue) != 0 || ex.queuedBytes != 0 {
		t.Fatal("unregister left the exchange registered or its queue full")
	}
}

// A direct writer (a WebSocket's, websocket_direct.go) is offered a frame
// only while nothing is queued before it; what it does not write is
// queued, and the relay is woken only for what is queued or when the
// writer asks.
func TestDeliverDirect(t *testing.T) {
	type step struct {
		body       string
		takes      int  // bytes the direct writer takes (-1: not offered)
		wake       bool // the writer asks for the relay
		wantQueued string
		wantWoken  bool
		take       bool // the relay takes the queue after this step
	}
	steps := []step{
		{body: "whole", takes: 5, wantQueued: ""},
		{body: "credit", takes: 6, wake: true, wantWoken: true},
		{body: "partial", takes: 3, wantQueued: "tial", wantWoken: true},
		{body: "behind", takes: -1, wantQueued: "tial|behind", wantWoken: true, take: true},
		{body: "none", takes: 0, wantQueued: "none", wantWoken: true, take: true},
		{body: "again", takes: 5},
	}
	ex := newExchange(1, 1<<20)
	var offered []string
	cur := 0
	ex.setDirect(func(b []byte) (int, bool) {
		offered = append(offered, string(b))
		return steps[cur].takes, steps[cur].wake
	})
	for i, s := range steps {
		cur = i
		before := len(offered)
		f := newFrame(len(s.body))
		copy(f.buf, s.body)
		ex.deliver(f.buf, f, true)
		f.release()
		if got := len(offered) > before; got != (s.takes >= 0) {
			t.Fatalf("step %d: offered to the direct writer: %v", i, got)
		}
		var queued []string
		for _, qf := range ex.queue {
			queued = append(queued, string(qf.body))
		}
		woken := false
		select {
		case <-ex.signal:
			woken = true
		default:
		}
		if strings.Join(queued, "|") != s.wantQueued || woken != s.wantWoken {
			t.Fatalf("step %d: queued %q, woken %v; want %q, %v", i, queued, woken, s.wantQueued, s.wantWoken)
		}
		if s.take {
			frames, _ := ex.take(nil)
			for _, qf := range frames {
				qf.frame.release()
			}
		}
	}
	deliver := func(body string, direct bool) {
		f := newFrame(len(body))
		copy(f.buf, body)
		ex.deliver(f.buf, f, direct)
		f.release()
	}
	// Not offered: the empty frame that ends a reply (queued), a frame for
	// many connections, anything once the exchange failed or the writer
	// is gone.
	deliver("", true)
	if len(offered) != 5 || len(ex.queue) != 1 {
		t.Fatalf("empty frame: offered %d times, %d queued", len(offered), len(ex.queue))
	}
	ex.releaseQueued()
	deliver("many", false)
	if len(offered) != 5 || len(ex.queue) != 1 {
		t.Fatalf("frame for many: offered %d times, %d queued", len(offered), len(ex.queue))
	}
	ex.releaseQueued()
	ex.setDirect(nil)
	deliver("gone", true)
	if len(offered) != 5 || len(ex.queue) != 1 || string(ex.queue[0].body) != "gone" {
		t.Fatalf("after setDirect(nil): offered %d times, %d queued", len(offered), len(ex.queue))
	}
	ex.releaseQueued()
	ex.setDirect(func(b []byte) (int, bool) { offered = append(offered, string(b)); return len(b), false })
	ex.fail(errStopped)
	deliver("late", true)
	if len(offered) != 5 || len(ex.queue) != 0 {
		t.Fatalf("after a failure: offered %d times, %d queued", len(offered), len(ex.queue))
	}
}

// The worker's empty frame ends its socket: from the moment the relay has
// taken it, nothing more is written directly, though the exchange still
// takes frames until it is unregistered.
func TestWorkerEndStopsDirectWrites(t *testing.T) {
	s := &wsSession{ex: newExchange(1, 0), keep: newKeepalive(0, 0)}
	f := newFrame(0)
	s.ex.deliver(f.buf, f, true)
	f.release()
	var frames []queuedFrame
	if end, over := s.writeQueued(&frames); !over || end.reason != "worker closed" {
		t.Fatalf("writeQueued = %+v, %v; want the worker's end", end, over)
	}
	if n, wake := s.writeDirect([]byte("late")); n != 0 || wake {
		t.Fatalf("direct write after the worker's end: %d bytes, wake %v", n, wake)
	}
}
