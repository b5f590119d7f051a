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

// Place is offered exactly the data messages that come as one frame, with
// their final flags and size; what it gives holds the unmasked payload, is
// not the Reader's to release, and nil leaves the message to the Reader.
func TestReaderPlace(t *testing.T) {
	key := [4]byte{1, 2, 3, 4}
	big := bytes.Repeat([]byte("0123456789abcdef"), 20000)
	type offer struct {
		flags byte
		n     int
	}
	cases := []struct {
		name    string
		frames  [][]byte
		decline bool
		want    []byte
		flags   byte
		offers  []offer
	}{
		{"one frame", [][]byte{AppendMasked(nil, finBit|OpBinary, big, key)}, false, big, 0x82, []offer{{0x82, len(big)}}},
		{"one text frame, rsv bit", [][]byte{AppendMasked(nil, finBit|0x40|OpText, []byte("hi"), key)}, false, []byte("hi"), 0xC1, []offer{{0xC1, 2}}},
		{"declined", [][]byte{AppendMasked(nil, finBit|OpBinary, big, key)}, true, big, 0x82, []offer{{0x82, len(big)}}},
		{"fragments are not offered", [][]byte{
			AppendMasked(nil, OpText, []byte("Hel"), key),
			AppendMasked(nil, finBit|OpContinuation, []byte("lo"), key),
		}, false, []byte("Hello"), 0x81, nil},
		{"control frames are not offered", [][]byte{AppendMasked(nil, finBit|OpPing, []byte("p"), key)}, false, []byte("p"), 0x89, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bufs := &recordingBuffers{}
			rd := NewReader(bufio.NewReader(bytes.NewReader(bytes.Join(tc.frames, nil))), 0)
			rd.Buffers = bufs
			var offers []offer
			var given []byte
			rd.Place = func(flags byte, n int) []byte {
				offers = append(offers, offer{flags, n})
				if tc.decline {
					return nil
				}
				given = make([]byte, n)
				return given
			}
			m, err := rd.ReadMessage()
			if err != nil || m.Flags != tc.flags || !bytes.Equal(m.Payload, tc.want) {
				t.Fatalf("read %#x, %d bytes (%v); want %#x, %d bytes", m.Flags, len(m.Payload), err, tc.flags, len(tc.want))
			}
			if len(offers) != len(tc.offers) || len(offers) > 0 && offers[0] != tc.offers[0] {
				t.Fatalf("offers %v, want %v", offers, tc.offers)
			}
			if placed := given != nil && &m.Payload[0] == &given[0]; placed != (len(tc.offers) > 0 && !tc.decline) {
				t.Fatalf("payload in the placed memory: %v", placed)
			}
			rd.Release(m.Payload)
			if given != nil && bufs.put != 0 {
				t.Fatal("Release gave a placed payload to Buffers")
			}
		})
	}
}
