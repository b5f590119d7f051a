package wsframe

import (
	"bufio"
	"bytes"
	"testing"
)

// recordingBuffers lends fresh buffers and counts what it lent and got back.
type recordingBuffers struct{ got, put int }

func (b *recordingBuffers) Get(n int) []byte { b.got++; return make([]byte, 0, n) }
func (b *recordingBuffers) Put(p []byte)     { b.put++ }

// Large messages (one frame, or fragments that outgrow the kept buffer)
// take their buffers from Buffers and Release gives them back; small ones
// and control frames never do.
func TestReaderBuffers(t *testing.T) {
	key := [4]byte{7, 7, 7, 7}
	big := bytes.Repeat([]byte("0123456789abcdef"), 20000) // 320000 bytes
	cases := []struct {
		name   string
		frames [][]byte
		want   []byte
		lent   bool
	}{
		{"small", [][]byte{AppendMasked(nil, finBit|OpText, []byte("hi"), key)}, []byte("hi"), false},
		{"ping", [][]byte{AppendMasked(nil, finBit|OpPing, []byte("p"), key)}, []byte("p"), false},
		{"large, one frame", [][]byte{AppendMasked(nil, finBit|OpBinary, big, key)}, big, true},
		{"large, fragments", [][]byte{
			AppendMasked(nil, OpBinary, big[:1000], key),
			AppendMasked(nil, OpContinuation, big[1000:100000], key),
			AppendMasked(nil, finBit|OpContinuation, big[100000:], key),
		}, big, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bufs := &recordingBuffers{}
			rd := NewReader(bufio.NewReader(bytes.NewReader(bytes.Join(tc.frames, nil))), 0)
			rd.Buffers = bufs
			m, err := rd.ReadMessage()
			if err != nil || !bytes.Equal(m.Payload, tc.want) {
				t.Fatalf("read %d bytes (%v), want %d", len(m.Payload), err, len(tc.want))
			}
			rd.Release(m.Payload)
			if lent := bufs.got > 0; lent != tc.lent || bufs.put != bufs.got {
				t.Fatalf("lent %d, given back %d; want lent=%v and all back", bufs.got, bufs.put, tc.lent)
			}
		})
	}
}
