package zmqio

import (
	"errors"
	"testing"

	zmq "github.com/pebbe/zmq4"
)

// Large parts sent with SendBytes, or received and copied out with Take,
// count toward a trim of glibc's heap; frames below largePart do not.
func TestLargePartsTrimHeap(t *testing.T) {
	tx, r := receiverPair(t)
	cases := []struct {
		name     string
		size     int
		count    int
		wantTrim bool
	}{
		{"frames below largePart", largePart / 4, 2 * trimAfter / (largePart / 4), false},
		{"large messages", largePart, 2 * trimAfter / largePart, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			waitNoTrimPending(t)
			freedSinceTrim.Store(0)
			part := make([]byte, tc.size)
			for range tc.count {
				if _, err := SendBytes(tx, part, 0); err != nil {
					t.Fatal(err)
				}
				_, _, err := r.Recv(nil, 0)
				if !errors.Is(err, ErrTooBig) {
					t.Fatalf("Recv into no buffer: %v, want ErrTooBig", err)
				}
				if got := r.Take(make([]byte, r.Size())); len(got) != tc.size {
					t.Fatalf("took %d bytes, want %d", len(got), tc.size)
				}
			}
			if got := trimPending.Load(); got != tc.wantTrim {
				t.Fatalf("trim scheduled: %v, want %v (freed %d)", got, tc.wantTrim, freedSinceTrim.Load())
			}
			if tc.wantTrim && freedSinceTrim.Load() < int64(2*tc.size*tc.count) {
				t.Fatalf("counted %d bytes freed, want both sides of %d parts of %d", freedSinceTrim.Load(), tc.count, tc.size)
			}
		})
	}
}

// BenchmarkLargeMessageHop: 1 MiB messages over TCP through libzmq, sent
// with SendBytes and copied out with Take, in a context made by NewContext
// (glibc tuned). Compare with MALLOC_MMAP_THRESHOLD_=1048576 in the
// environment (the threshold then stays the user's) to see what mapping
// each message costs.
func BenchmarkLargeMessageHop(b *testing.B) {
	ctx, err := NewContext()
	if err != nil {
		b.Fatal(err)
	}
	rx, _ := ctx.NewSocket(zmq.PULL)
	tx, _ := ctx.NewSocket(zmq.PUSH)
	for _, s := range []*zmq.Socket{rx, tx} {
		_ = s.SetLinger(0)
		defer s.Close()
	}
	if err := rx.Bind("tcp://127.0.0.1:*"); err != nil {
		b.Fatal(err)
	}
	ep, _ := rx.GetLastEndpoint()
	if err := tx.Connect(ep); err != nil {
		b.Fatal(err)
	}
	r, err := NewReceiver(rx)
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	msg := make([]byte, 1<<20+200) // a 1 MiB payload and its Mongrel2 head
	into := make([]byte, len(msg))
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := SendBytes(tx, msg, 0); err != nil {
			b.Fatal(err)
		}
		if _, _, err := r.Recv(nil, 0); !errors.Is(err, ErrTooBig) {
			b.Fatal(err)
		}
		r.Take(into)
	}
}
