package zmqio

import (
	"errors"
	"testing"
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
