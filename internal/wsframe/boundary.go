package wsframe

import "encoding/binary"

// Boundaries follows a stream of frames written in pieces of any size (a
// worker's raw reply bytes) and tells whether the stream stands between
// two frames, where a frame of another writer (a ping, a close) may go
// without garbling one. It reads only frame headers and skips payloads by
// their length, so it costs next to nothing per byte. A frame with a
// length that has the top bit set (invalid) is followed as an endless
// one: the stream never stands at a boundary again.
type Boundaries struct {
	hdr    [maxHeaderLen]byte
	have   int    // header bytes of the current frame seen so far
	need   int    // the header's full length, once its second byte is seen
	remain uint64 // payload bytes of the current frame still to come
}

// Write follows p, the next bytes of the stream.
func (b *Boundaries) Write(p []byte) {
	for len(p) > 0 {
		if b.remain > 0 {
			n := min(uint64(len(p)), b.remain)
			b.remain -= n
			p = p[n:]
			continue
		}
		b.hdr[b.have] = p[0]
		b.have++
		p = p[1:]
		if b.have == 2 {
			b.need = headerLen(b.hdr[1])
		}
		if b.have >= 2 && b.have == b.need {
			b.remain = payloadLen(b.hdr[:b.need])
			b.have, b.need = 0, 0
		}
	}
}

// AtBoundary reports whether the bytes so far end with a whole frame (or
// are none).
func (b *Boundaries) AtBoundary() bool { return b.have == 0 && b.remain == 0 }

// headerLen is the length of a frame header whose second byte is b1: the
// extended length and the masking key included.
func headerLen(b1 byte) int {
	n := 2
	switch b1 & 0x7F {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	if b1&maskBit != 0 {
		n += 4
	}
	return n
}

// payloadLen reads the payload length from a whole header.
func payloadLen(h []byte) uint64 {
	switch n := h[1] & 0x7F; n {
	case 126:
		return uint64(binary.BigEndian.Uint16(h[2:4]))
	case 127:
		return binary.BigEndian.Uint64(h[2:10])
	default:
		return uint64(n)
	}
}
