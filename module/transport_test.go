package caddyzmq

import (
	"runtime"
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
		ex.deliver(f.buf, f)
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
		ex.deliver(f.buf, f)
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
		ex.deliver(f.buf, f)
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
