package wsframe

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// boundaryOffsets is the reference: the offsets of stream at which a frame
// ends (0 included), parsing the whole stream at once.
func boundaryOffsets(stream []byte) map[int]bool {
	at := map[int]bool{0: true}
	i := 0
	for i+2 <= len(stream) {
		h := headerLen(stream[i+1])
		if i+h > len(stream) {
			break
		}
		var n uint64
		switch stream[i+1] & 0x7F {
		case 126:
			n = uint64(binary.BigEndian.Uint16(stream[i+2:]))
		case 127:
			n = binary.BigEndian.Uint64(stream[i+2:])
		default:
			n = uint64(stream[i+1] & 0x7F)
		}
		if n > uint64(len(stream)-i-h) {
			break
		}
		i += h + int(n)
		at[i] = true
	}
	return at
}

// checkSplits feeds stream in pieces of every size from 1 to maxPiece and
// wants AtBoundary exactly where the reference finds a frame end.
func checkSplits(t *testing.T, stream []byte, maxPiece int) {
	t.Helper()
	want := boundaryOffsets(stream)
	for piece := 1; piece <= maxPiece; piece++ {
		var b Boundaries
		for off := 0; off < len(stream); {
			end := min(off+piece, len(stream))
			b.Write(stream[off:end])
			off = end
			if got := b.AtBoundary(); got != want[off] {
				t.Fatalf("pieces of %d: at offset %d AtBoundary %v, want %v", piece, off, got, want[off])
			}
		}
	}
}

func TestBoundaries(t *testing.T) {
	key := [4]byte{1, 2, 3, 4}
	cases := []struct {
		name   string
		stream []byte
		ends   []int // frame ends the stream must stop at, besides 0
	}{
		{"empty", nil, nil},
		{"small text", AppendFrame(nil, OpText, []byte("hello")), []int{7}},
		{"empty payload", AppendFrame(nil, OpPing, nil), []int{2}},
		{"16-bit length", AppendFrame(nil, OpBinary, make([]byte, 300)), []int{304}},
		{"64-bit length", AppendFrame(nil, OpBinary, make([]byte, 70000)), []int{70010}},
		{"masked", AppendMasked(nil, finBit|OpText, []byte("abc"), key), []int{9}},
		{"fragments and a ping between", slicesConcat(
			AppendHeader(nil, OpText, 3), []byte("abc"),
			AppendFrame(nil, OpPing, []byte("p")),
			AppendHeader(nil, finBit|OpContinuation, 2), []byte("de"),
		), []int{5, 8, 12}},
		{"close", AppendClose(nil, CloseNormal, "bye"), []int{7}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			want := boundaryOffsets(tc.stream)
			for _, e := range tc.ends {
				if !want[e] {
					t.Fatalf("reference misses the frame end at %d", e)
				}
			}
			checkSplits(t, tc.stream, 16)
			var b Boundaries
			b.Write(tc.stream)
			if !b.AtBoundary() {
				t.Fatal("not at a boundary after whole frames")
			}
		})
	}
}

// A half-written frame is not a boundary, whatever follows in a later
// write; an invalid 64-bit length never ends.
func TestBoundariesMidFrame(t *testing.T) {
	frame := AppendFrame(nil, OpBinary, bytes.Repeat([]byte{'x'}, 1000))
	var b Boundaries
	b.Write(frame[:500])
	if b.AtBoundary() {
		t.Fatal("boundary in the middle of a payload")
	}
	b.Write(frame[500:])
	if !b.AtBoundary() {
		t.Fatal("no boundary after the payload's end")
	}
	b.Write([]byte{0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0})
	b.Write(make([]byte, 1<<16))
	if b.AtBoundary() {
		t.Fatal("boundary inside a frame of an invalid length")
	}
}

func slicesConcat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// FuzzBoundaries: any byte stream, fed in pieces of any size, stops at a
// boundary exactly where parsing it whole finds a frame end.
func FuzzBoundaries(f *testing.F) {
	f.Add(AppendFrame(nil, OpText, []byte("hello")), uint8(3))
	f.Add(AppendFrame(AppendFrame(nil, OpBinary, make([]byte, 200)), OpPing, nil), uint8(7))
	f.Add(AppendMasked(nil, finBit|OpBinary, make([]byte, 70000), [4]byte{9, 9, 9, 9}), uint8(1))
	f.Add([]byte{0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0, 1}, uint8(2))
	f.Fuzz(func(t *testing.T, stream []byte, piece uint8) {
		want := boundaryOffsets(stream)
		step := int(piece%32) + 1
		var b Boundaries
		for off := 0; off < len(stream); {
			end := min(off+step, len(stream))
			b.Write(stream[off:end])
			off = end
			if got := b.AtBoundary(); got != want[off] {
				t.Fatalf("pieces of %d: at offset %d AtBoundary %v, want %v", step, off, got, want[off])
			}
		}
	})
}
