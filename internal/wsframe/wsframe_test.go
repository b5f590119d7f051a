package wsframe

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strconv"
	"testing"
)

var key = [4]byte{0x37, 0xfa, 0x21, 0x3d}

func reader(b []byte, max int64) *Reader {
	return NewReader(bufio.NewReader(bytes.NewReader(b)), max)
}

// RFC 6455 section 1.3's example.
func TestAcceptKey(t *testing.T) {
	if got := AcceptKey("dGhlIHNhbXBsZSBub25jZQ=="); got != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("AcceptKey = %q", got)
	}
}

// RFC 6455 section 5.7's examples, byte for byte.
func TestRFCExamples(t *testing.T) {
	masked := []byte{0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58}
	if got := AppendMasked(nil, 0x81, []byte("Hello"), key); !bytes.Equal(got, masked) {
		t.Fatalf("AppendMasked = % x", got)
	}
	m, err := reader(masked, 0).ReadMessage()
	if err != nil || m.Flags != 0x81 || string(m.Payload) != "Hello" {
		t.Fatalf("ReadMessage = %x %q %v", m.Flags, m.Payload, err)
	}
	if got := AppendFrame(nil, OpText, []byte("Hello")); !bytes.Equal(got, []byte{0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f}) {
		t.Fatalf("AppendFrame = % x", got)
	}
	// 256 bytes binary: 16-bit length; 64 KiB: 64-bit length.
	if got := AppendFrame(nil, OpBinary, make([]byte, 256))[:4]; !bytes.Equal(got, []byte{0x82, 0x7E, 0x01, 0x00}) {
		t.Fatalf("16-bit header = % x", got)
	}
	if got := AppendFrame(nil, OpBinary, make([]byte, 65536))[:10]; !bytes.Equal(got, []byte{0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0}) {
		t.Fatalf("64-bit header = % x", got)
	}
	if got := AppendClose(nil, 1001, "bye"); !bytes.Equal(got, []byte{0x88, 0x05, 0x03, 0xE9, 'b', 'y', 'e'}) {
		t.Fatalf("AppendClose = % x", got)
	}
}

func TestReadMessage(t *testing.T) {
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	type want struct {
		flags   byte
		payload string
	}
	tests := []struct {
		name string
		in   []byte
		max  int64
		want []want
		err  error
	}{
		{name: "binary", in: AppendMasked(nil, 0x82, []byte{0, 1, 2}, key), want: []want{{0x82, "\x00\x01\x02"}}},
		{name: "fragments reassembled, ping passed at once",
			in: cat(AppendMasked(nil, 0x01, []byte("Hel"), key), AppendMasked(nil, 0x89, []byte("p"), key),
				AppendMasked(nil, 0x00, []byte("l"), key), AppendMasked(nil, 0x80, []byte("o"), key)),
			want: []want{{0x89, "p"}, {0x81, "Hello"}}},
		{name: "rsv bits kept in flags", in: AppendMasked(nil, 0xC1, []byte("x"), key), want: []want{{0xC1, "x"}}},
		{name: "close", in: AppendMasked(nil, 0x88, []byte{0x03, 0xE8}, key), want: []want{{0x88, "\x03\xe8"}}},
		{name: "pong", in: AppendMasked(nil, 0x8A, nil, key), want: []want{{0x8A, ""}}},
		{name: "16-bit length", in: AppendMasked(nil, 0x82, bytes.Repeat([]byte("a"), 300), key), want: []want{{0x82, string(bytes.Repeat([]byte("a"), 300))}}},
		{name: "unmasked refused", in: AppendFrame(nil, OpText, []byte("x")), err: ErrUnmasked},
		{name: "stray continuation", in: AppendMasked(nil, 0x80, []byte("x"), key), err: ErrStrayContinuation},
		{name: "data frame inside fragments", in: cat(AppendMasked(nil, 0x01, []byte("a"), key), AppendMasked(nil, 0x81, []byte("b"), key)),
			err: ErrExpectedContinue},
		{name: "fragmented control", in: AppendMasked(nil, 0x09, nil, key), err: ErrFragmentedControl},
		{name: "long control", in: AppendMasked(nil, 0x89, make([]byte, 126), key), err: ErrControlTooLong},
		{name: "reserved opcode", in: AppendMasked(nil, 0x83, nil, key), err: ErrBadOpcode},
		{name: "frame over the limit", in: AppendMasked(nil, 0x82, make([]byte, 11), key), max: 10, err: ErrTooBig},
		{name: "fragments over the limit", in: cat(AppendMasked(nil, 0x02, make([]byte, 6), key), AppendMasked(nil, 0x80, make([]byte, 6), key)),
			max: 10, err: ErrTooBig},
		{name: "at the limit", in: AppendMasked(nil, 0x82, make([]byte, 10), key), max: 10, want: []want{{0x82, string(make([]byte, 10))}}},
		{name: "64-bit length with top bit", in: []byte{0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4}, err: ErrBadLength},
		{name: "truncated payload", in: AppendMasked(nil, 0x82, []byte("abc"), key)[:7], err: io.ErrUnexpectedEOF},
		{name: "truncated header", in: []byte{0x82, 0xFE, 0x01}, err: io.ErrUnexpectedEOF},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rd := reader(tc.in, tc.max)
			for _, w := range tc.want {
				m, err := rd.ReadMessage()
				if err != nil {
					t.Fatal(err)
				}
				if m.Flags != w.flags || string(m.Payload) != w.payload {
					t.Fatalf("got %#x %q, want %#x %q", m.Flags, m.Payload, w.flags, w.payload)
				}
			}
			_, err := rd.ReadMessage()
			want := tc.err
			if want == nil {
				want = io.EOF
			}
			if !errors.Is(err, want) {
				t.Fatalf("err = %v, want %v", err, want)
			}
		})
	}
}

func TestCloseCode(t *testing.T) {
	if CloseCode(ErrTooBig) != 1009 || CloseCode(ErrUnmasked) != 1002 || CloseCode(io.ErrUnexpectedEOF) != 0 {
		t.Fatal("wrong close codes")
	}
}

func TestParseClose(t *testing.T) {
	tests := []struct {
		in     []byte
		code   int
		reason string
		ok     bool
	}{
		{nil, 1005, "", true},
		{[]byte{0x03, 0xE8, 'o', 'k'}, 1000, "ok", true},
		{[]byte{0x03}, 0, "", false},
		{[]byte{0x03, 0xED}, 1005, "", false}, // 1005 may not be sent
		{[]byte{0x0B, 0xB8, 0xff}, 3000, "", false},
	}
	for _, tc := range tests {
		code, reason, err := ParseClose(tc.in)
		if (err == nil) != tc.ok || (tc.ok && (code != tc.code || reason != tc.reason)) {
			t.Errorf("ParseClose(% x) = %d %q %v", tc.in, code, reason, err)
		}
	}
}

func TestServerFrameRoundTrip(t *testing.T) {
	for _, n := range []int{0, 125, 126, 65535, 65536} {
		p := bytes.Repeat([]byte{7}, n)
		b0, got, err := ReadServerFrame(bufio.NewReader(bytes.NewReader(AppendFrame(nil, OpBinary, p))), 0)
		if err != nil || b0 != 0x82 || !bytes.Equal(got, p) {
			t.Fatalf("n=%d: %x %d %v", n, b0, len(got), err)
		}
	}
}

// FuzzReadMessage: whatever the client sends, the reader returns messages
// within the limit or an error, and never panics.
func FuzzReadMessage(f *testing.F) {
	f.Add(AppendMasked(nil, 0x81, []byte("Hello"), key))
	f.Add(append(AppendMasked(nil, 0x01, []byte("a"), key), AppendMasked(nil, 0x80, []byte("b"), key)...))
	f.Add([]byte{0x82, 0xFF, 0, 0, 0, 0, 0, 0, 1, 0, 1, 2, 3, 4})
	f.Add(AppendMasked(nil, 0x89, []byte("p"), key))
	f.Fuzz(func(t *testing.T, in []byte) {
		const limit = 1 << 12
		rd := reader(in, limit)
		// The same stream read with Place taking some one-frame messages
		// (odd sizes) gives the same messages and the same end.
		placing := reader(in, limit)
		placing.Place = func(flags byte, n int) []byte {
			if n%2 == 0 {
				return nil
			}
			return make([]byte, n+3) // longer than asked: the Reader cuts it
		}
		for range 64 {
			m, err := rd.ReadMessage()
			pm, perr := placing.ReadMessage()
			if (err == nil) != (perr == nil) || err != nil && err.Error() != perr.Error() {
				t.Fatalf("errors differ: %v, with Place %v", err, perr)
			}
			if err != nil {
				return
			}
			if m.Flags != pm.Flags || !bytes.Equal(m.Payload, pm.Payload) {
				t.Fatalf("message %#x %q, with Place %#x %q", m.Flags, m.Payload, pm.Flags, pm.Payload)
			}
			if len(m.Payload) > limit || m.Flags&0x80 == 0 {
				t.Fatalf("message of %d bytes, flags %#x", len(m.Payload), m.Flags)
			}
			if op := m.Opcode(); op >= OpClose && len(m.Payload) > 125 {
				t.Fatalf("control payload of %d bytes", len(m.Payload))
			}
		}
	})
}

// The word-at-a-time and vectorised unmasking equal the byte-wise
// definition for every length and alignment, around the sizes where the
// method and the key stream's chunks change too.
func TestUnmask(t *testing.T) {
	var sizes []int
	for n := range 40 {
		sizes = append(sizes, n)
	}
	for _, edge := range []int{unmaskVectorMin, unmaskStream, 2 * unmaskStream, 5*unmaskStream + 3} {
		for n := edge - 9; n <= edge+9; n++ {
			sizes = append(sizes, n)
		}
	}
	for _, n := range sizes {
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(i * 7)
		}
		want := append([]byte(nil), p...)
		for i := range want {
			want[i] ^= key[i%4]
		}
		unmaskAt(p, key)
		if !bytes.Equal(p, want) {
			t.Fatalf("n=%d: % x, want % x", n, p, want)
		}
	}
}

// go test -run XXX -bench Unmask ./internal/wsframe/
func BenchmarkUnmask(b *testing.B) {
	for _, n := range []int{64, 4 << 10, 1 << 20} {
		p := make([]byte, n)
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			b.SetBytes(int64(n))
			for b.Loop() {
				unmaskAt(p, key)
			}
		})
	}
}
