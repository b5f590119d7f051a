package zmqio

import (
	"bytes"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"
)

var pairSeq atomic.Int64

// receiverPair is pair with a Receiver on rx, closed when the test ends.
func receiverPair(t *testing.T) (*zmq.Socket, *Receiver) {
	t.Helper()
	tx, rx := pair(t)
	r, err := NewReceiver(rx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return tx, r
}

// eventually polls cond until it holds, failing the test with what after
// 10 s: libzmq and the runtime free things on threads of their own.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// pair returns a connected PUSH (tx) and PULL (rx) over inproc.
func pair(t testing.TB) (tx, rx *zmq.Socket) {
	t.Helper()
	ctx, err := zmq.NewContext()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("inproc://zmqio-test-%d", pairSeq.Add(1))
	rx, err = ctx.NewSocket(zmq.PULL)
	if err != nil {
		t.Fatal(err)
	}
	tx, err = ctx.NewSocket(zmq.PUSH)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*zmq.Socket{rx, tx} {
		if err := s.SetLinger(0); err != nil {
			t.Fatal(err)
		}
	}
	if err := rx.Bind(addr); err != nil {
		t.Fatal(err)
	}
	if err := tx.Connect(addr); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = tx.Close()
		_ = rx.Close()
		_ = ctx.Term()
	})
	return tx, rx
}

func TestRecv(t *testing.T) {
	tests := []struct {
		name  string
		parts [][]byte
		buf   int
	}{
		{"small", [][]byte{[]byte("hello")}, 64},
		{"exact fit", [][]byte{bytes.Repeat([]byte{'x'}, 64)}, 64},
		{"too big", [][]byte{bytes.Repeat([]byte{'y'}, 65)}, 64},
		{"empty part", [][]byte{{}}, 64},
		{"no buffer", [][]byte{[]byte("abc")}, 0},
		{"multipart", [][]byte{[]byte("id"), bytes.Repeat([]byte{'z'}, 300), []byte("tail")}, 128},
		{"big", [][]byte{bytes.Repeat([]byte{'b'}, 1<<20)}, 256 << 10},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tx, r := receiverPair(t)
			for i, p := range tc.parts {
				flag := zmq.SNDMORE
				if i == len(tc.parts)-1 {
					flag = 0
				}
				if _, err := tx.SendBytes(p, flag); err != nil {
					t.Fatal(err)
				}
			}
			buf := make([]byte, tc.buf)
			for i, want := range tc.parts {
				got, more, err := r.Recv(buf, 0)
				if errors.Is(err, ErrTooBig) {
					if len(want) <= tc.buf {
						t.Fatalf("part %d: ErrTooBig for %d bytes in a %d-byte buffer", i, len(want), tc.buf)
					}
					if r.Size() != len(want) {
						t.Fatalf("part %d: Size %d, want %d", i, r.Size(), len(want))
					}
					got = r.Take(make([]byte, r.Size()))
				} else if err != nil {
					t.Fatalf("part %d: %v", i, err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("part %d: got %d bytes %.20q, want %d bytes %.20q", i, len(got), got, len(want), want)
				}
				if wantMore := i < len(tc.parts)-1; more != wantMore {
					t.Fatalf("part %d: more = %v, want %v", i, more, wantMore)
				}
			}
			if _, _, err := r.Recv(buf, zmq.DONTWAIT); zmq.AsErrno(err) != zmq.Errno(syscall.EAGAIN) {
				t.Fatalf("empty socket: err = %v, want EAGAIN", err)
			}
		})
	}
}

func TestRecvCopy(t *testing.T) {
	tx, r := receiverPair(t)
	small, big := []byte("request"), bytes.Repeat([]byte{'q'}, copyScratch+1)
	for _, p := range [][]byte{small, big, small} {
		if _, err := tx.SendBytes(p, 0); err != nil {
			t.Fatal(err)
		}
	}
	var got [][]byte
	for range 3 {
		m, err := r.RecvCopy(0)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, m)
	}
	// Each is its own slice: the first must survive the later receives.
	if !bytes.Equal(got[0], small) || !bytes.Equal(got[1], big) || !bytes.Equal(got[2], small) {
		t.Fatalf("got %d/%d/%d bytes, want %d/%d/%d", len(got[0]), len(got[1]), len(got[2]), len(small), len(big), len(small))
	}
}

// RecvCopyKeep copies parts below keep into slices of their own, of any
// size, and leaves the others in libzmq's memory.
func TestRecvCopyKeep(t *testing.T) {
	tx, r := receiverPair(t)
	const keep = 2 * copyScratch
	small, mid, big := []byte("m"), bytes.Repeat([]byte{'m'}, copyScratch+1), bytes.Repeat([]byte{'k'}, keep)
	for _, p := range [][]byte{small, mid, big, small} {
		if _, err := tx.SendBytes(p, 0); err != nil {
			t.Fatal(err)
		}
	}
	for i, want := range [][]byte{small, mid, big, small} {
		part, kept, err := r.RecvCopyKeep(keep, 0)
		if err != nil {
			t.Fatal(err)
		}
		if (kept != nil) != (len(want) >= keep) {
			t.Fatalf("part %d (%d bytes): kept = %v", i, len(want), kept != nil)
		}
		if kept != nil {
			part = kept.Bytes()
		}
		if !bytes.Equal(part, want) {
			t.Fatalf("part %d: %d bytes, want %d", i, len(part), len(want))
		}
		kept.Close()
		kept.Close() // again, and on nil: nothing
	}
}

// TestHandleChecksLayout: the libzmq handle is found in a pebbe socket
// (TestRecv shows it is the right one: it receives what the socket got).
func TestHandleChecksLayout(t *testing.T) {
	_, rx := pair(t)
	h, err := handle(rx)
	if err != nil || h == nil {
		t.Fatalf("handle: %v", err)
	}
}

func TestReadiness(t *testing.T) {
	tx, rx := pair(t)
	rd, r := readinessOf(t, rx)
	var got []byte
	tries := 0
	recv := func() bool {
		tries++
		m, _, err := r.Recv(make([]byte, 16), zmq.DONTWAIT)
		if err != nil && zmq.AsErrno(err) != zmq.Errno(syscall.EAGAIN) {
			t.Errorf("Recv: %v", err)
			return true
		}
		got = m
		return err == nil
	}

	if err := rd.AwaitTimeout(20*time.Millisecond, recv); !errors.Is(err, ErrTimeout) {
		t.Fatalf("idle socket: AwaitTimeout = %v, want ErrTimeout", err)
	}
	// A message sent while the owner waits wakes it; so does one sent
	// before it waits (then the first try takes it, with no wait).
	for i, delay := range []time.Duration{50 * time.Millisecond, 0} {
		sent := make(chan error, 1)
		go func() {
			time.Sleep(delay) // lets the owner be parked first (not synchronisation: both orders must work)
			_, err := tx.SendBytes([]byte("ping"), 0)
			sent <- err
		}()
		if delay == 0 {
			if err := <-sent; err != nil {
				t.Fatal(err)
			}
		}
		got, tries = nil, 0
		if err := rd.AwaitTimeout(5*time.Second, recv); err != nil {
			t.Fatalf("round %d: AwaitTimeout = %v, want a message", i, err)
		}
		if string(got) != "ping" {
			t.Fatalf("round %d: received %q", i, got)
		}
		if delay == 0 && tries != 1 {
			t.Errorf("round %d: %d tries for a message that was there", i, tries)
		}
		if delay != 0 {
			if err := <-sent; err != nil {
				t.Fatal(err)
			}
		}
	}
	// Many messages, each sent only once the owner has taken the one
	// before: every one must wake a park (none is lost between a try
	// that found nothing and the park after it).
	echo := make(chan struct{})
	go func() {
		for range 200 {
			if _, err := tx.SendBytes([]byte("ping"), 0); err != nil {
				t.Error(err)
				return
			}
			if _, ok := <-echo; !ok {
				return
			}
		}
	}()
	for i := range 200 {
		got = nil
		if err := rd.AwaitTimeout(5*time.Second, recv); err != nil || string(got) != "ping" {
			close(echo)
			t.Fatalf("message %d: AwaitTimeout = %v, received %q", i, err, got)
		}
		echo <- struct{}{}
	}
	done := make(chan error, 1)
	go func() { done <- rd.Await(recv) }()
	rd.Interrupt()
	select {
	case err := <-done:
		if !errors.Is(err, ErrInterrupted) {
			t.Fatalf("Await after Interrupt = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Interrupt did not end Await")
	}
	if err := rd.AwaitTimeout(time.Second, recv); !errors.Is(err, ErrInterrupted) {
		t.Fatalf("AwaitTimeout after Interrupt = %v, want ErrInterrupted", err)
	}
}

// TestRecvInto: a part that fits lands in the buffer; a bigger one comes
// in a slice of its own, with no ErrTooBig.
func TestRecvInto(t *testing.T) {
	tx, r := receiverPair(t)
	buf := make([]byte, 8)
	for _, want := range [][]byte{[]byte("fits"), []byte("does not fit")} {
		if _, err := tx.SendBytes(want, 0); err != nil {
			t.Fatal(err)
		}
		got, _, err := r.RecvInto(buf, 0)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("RecvInto = %q, %v; want %q", got, err, want)
		}
		if inBuf := &got[0] == &buf[0]; inBuf != (len(want) <= len(buf)) {
			t.Fatalf("%q: in the caller's buffer = %v", want, inBuf)
		}
	}
}

func TestUserTunedMalloc(t *testing.T) {
	for _, tc := range []struct {
		env  []string
		want bool
	}{
		{nil, false},
		{[]string{"PATH=/bin", "HOME=/root"}, false},
		{[]string{"GLIBC_TUNABLES=glibc.malloc.mmap_threshold=65536"}, true},
		{[]string{"GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX2"}, false},
		{[]string{"GLIBC_TUNABLES=glibc.malloc.arena_max=2:glibc.malloc.trim_threshold=0"}, true},
		{[]string{"MALLOC_TRIM_THRESHOLD_=0"}, true},
		{[]string{"MALLOC_MMAP_THRESHOLD_=131072"}, true},
		{[]string{"MALLOC_ARENA_MAX=2"}, false},
	} {
		if got := userTunedMalloc(tc.env); got != tc.want {
			t.Errorf("userTunedMalloc(%q) = %v, want %v", tc.env, got, tc.want)
		}
	}
}

func TestTuneMalloc(t *testing.T) {
	if tuneMalloc([]string{"GLIBC_TUNABLES=glibc.malloc.trim_threshold=0"}) {
		t.Fatal("tuneMalloc overrode the user's threshold")
	}
	if !tuneMalloc(nil) {
		t.Fatal("tuneMalloc did not set glibc's thresholds (mallopt refused, or not glibc)")
	}
}

// RecvKeep leaves a part of keep bytes or more in libzmq's memory; Close
// frees it, and so does dropping the Msg without Close, once unreachable.
func TestRecvKeep(t *testing.T) {
	tx, r := receiverPair(t)
	const keep = 1000
	for _, n := range []int{keep - 1, keep, 64 << 10, keep} {
		if _, err := tx.SendBytes(bytes.Repeat([]byte{'k'}, n), 0); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 4096)
	part, m, _, err := r.RecvKeep(buf, keep, 0)
	if err != nil || m != nil || len(part) != keep-1 {
		t.Fatalf("below keep: %d bytes, kept %v, err %v; want a copy", len(part), m, err)
	}
	var states []*msgState
	for i, want := range []int{keep, 64 << 10, keep} {
		part, m, _, err := r.RecvKeep(buf, keep, 0)
		if err != nil || m == nil || part != nil {
			t.Fatalf("part %d: kept %v, err %v; want it kept", i, m, err)
		}
		if got := m.Bytes(); len(got) != want || got[0] != 'k' || got[want-1] != 'k' {
			t.Fatalf("part %d: %d bytes, want %d", i, len(got), want)
		}
		states = append(states, m.st)
		if i == 0 {
			m.Close()
			m.Close() // a no-op
			if !m.Closed() {
				t.Fatal("Close did not free it")
			}
		}
		// The others are dropped without Close.
	}
	for _, st := range states {
		eventually(t, "a dropped Msg was never freed", func() bool {
			runtime.GC()
			return st.closed.Load()
		})
	}
}

// Freeing more than trimAfter bytes of kept parts schedules one trim of
// glibc's heap (a burst of them, one trim); a few small parts do not.
func TestKeptPartsTrimHeap(t *testing.T) {
	tx, r := receiverPair(t)
	waitNoTrimPending(t)
	before := trims.Load()
	freedSinceTrim.Store(0)
	part := make([]byte, 256<<10)
	recvKept := func(n int) {
		t.Helper()
		for range n {
			if _, err := tx.SendBytes(part, 0); err != nil {
				t.Fatal(err)
			}
			_, m, _, err := r.RecvKeep(nil, len(part), 0)
			if err != nil || m == nil {
				t.Fatalf("kept %v, err %v", m, err)
			}
			m.Close()
		}
	}
	recvKept(trimAfter/len(part) - 1)
	if trimPending.Load() {
		t.Fatal("less than trimAfter freed scheduled a trim")
	}
	recvKept(2 * trimAfter / len(part)) // a burst of twice the threshold
	if !trimPending.Load() {
		t.Fatal("no trim scheduled after freeing twice trimAfter")
	}
	waitNoTrimPending(t)
	if got := trims.Load() - before; got != 1 {
		t.Fatalf("%d trims after one burst, want 1", got)
	}
}

func waitNoTrimPending(t *testing.T) {
	t.Helper()
	eventually(t, "the scheduled trim never ran", func() bool { return !trimPending.Load() })
}

// BenchmarkAwaitTimeoutReady is the owner's cost for a message that is
// already there (the loaded case: replies queue while the owner works).
func BenchmarkAwaitTimeoutReady(b *testing.B) {
	tx, rx := pair(b)
	rd, r := readinessOf(b, rx)
	buf := make([]byte, 16)
	recv := func() bool {
		_, _, err := r.Recv(buf, zmq.DONTWAIT)
		return err == nil
	}
	for b.Loop() {
		b.StopTimer()
		if _, err := tx.SendBytes([]byte("ping"), 0); err != nil {
			b.Fatal(err)
		}
		for !recvReady(rx) {
		}
		b.StartTimer()
		if err := rd.AwaitTimeout(time.Second, recv); err != nil {
			b.Fatal(err)
		}
	}
}

// readinessOf returns a Readiness and a Receiver on rx, closed when the
// test ends.
func readinessOf(t testing.TB, rx *zmq.Socket) (*Readiness, *Receiver) {
	t.Helper()
	rd, err := NewReadiness(rx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rd.Close() })
	r, err := NewReceiver(rx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return rd, r
}

func recvReady(s *zmq.Socket) bool {
	ev, _ := s.GetEvents()
	return ev&zmq.POLLIN != 0
}
