// Package wsframe reads and writes RFC 6455 WebSocket frames the way
// Mongrel2 does: a server reads masked client frames, reassembles
// fragmented messages, passes control frames on at once, and writes
// unmasked frames. It has no state beyond a Reader's buffer and knows
// nothing of ZeroMQ or HTTP.
package wsframe

import (
	"bufio"
	"crypto/sha1"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// Opcodes (RFC 6455 section 5.2).
const (
	OpContinuation = 0x0
	OpText         = 0x1
	OpBinary       = 0x2
	OpClose        = 0x8
	OpPing         = 0x9
	OpPong         = 0xA
)

// Close codes used by the bridge (RFC 6455 section 7.4.1).
const (
	CloseNormal         = 1000
	CloseGoingAway      = 1001
	CloseProtocolError  = 1002
	CloseNoStatus       = 1005
	CloseInvalidPayload = 1007
	CloseMessageTooBig  = 1009
	CloseInternalError  = 1011
	CloseTryAgainLater  = 1013
)

const (
	finBit               = 0x80
	rsvBits              = 0x70
	maskBit              = 0x80
	maxControlPayload    = 125
	websocketGUID        = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
	maxHeaderLen         = 14
	closeCodeLen         = 2
	defaultReassemblyCap = 64 << 10
)

// AcceptKey is the Sec-WebSocket-Accept value for a Sec-WebSocket-Key: the
// base64 SHA-1 of the key and the RFC 6455 GUID, as Mongrel2's
// websocket_challenge computes it (the key is taken as sent, untrimmed).
func AcceptKey(key string) string {
	sum := sha1.Sum([]byte(key + websocketGUID))
	return base64.StdEncoding.EncodeToString(sum[:])
}

// SwitchingHead is the start of a server's answer to an opening handshake
// (RFC 6455 section 4.2.2), up to the Sec-WebSocket-Accept value; the
// value, "\r\n", any further header lines and the blank line follow.
const SwitchingHead = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "

// ProtocolError is a client frame the server must refuse; Code is the
// close code to send.
type ProtocolError struct {
	msg  string
	Code int
}

func (e *ProtocolError) Error() string { return "websocket: " + e.msg }

func protocolError(msg string) error { return &ProtocolError{msg: msg, Code: CloseProtocolError} }

// Errors a Reader returns; each is a *ProtocolError.
var (
	ErrUnmasked          = protocolError("client frame is not masked")
	ErrFragmentedControl = protocolError("fragmented control frame")
	ErrControlTooLong    = protocolError("control frame payload over 125 bytes")
	ErrStrayContinuation = protocolError("continuation frame without a message to continue")
	ErrExpectedContinue  = protocolError("new data frame in the middle of a fragmented message")
	ErrBadOpcode         = protocolError("reserved opcode")
	ErrBadLength         = protocolError("64-bit length with the top bit set")
	ErrTooBig            = error(&ProtocolError{msg: "message exceeds the size limit", Code: CloseMessageTooBig})
)

// CloseCode is the close code a server sends for a Reader error, and 0 for
// errors that are not the client's protocol violations (I/O errors).
func CloseCode(err error) int {
	var pe *ProtocolError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return 0
}

// Message is one client message as Mongrel2 hands it to a handler. Flags
// is the first byte of its first frame with FIN set: 0x81 text, 0x82
// binary, 0x88 close, 0x89 ping, 0x8A pong (RSV bits kept).
type Message struct {
	Flags   byte
	Payload []byte
}

// Opcode of the message.
func (m Message) Opcode() byte { return m.Flags & 0x0F }

// Reader reads client messages. MaxMessage bounds a message's payload
// (all its fragments together); 0 means no bound. Control frames between
// the fragments of a message are returned at once, as Mongrel2 does.
type Reader struct {
	r          *bufio.Reader
	MaxMessage int64
	// Buffers, if set, lends the buffers of messages larger than a Reader
	// keeps between messages; Release gives them back.
	Buffers Buffers
	// Place, if set, is offered every data message that arrives as one
	// frame, before its payload is read: it returns n bytes of memory of
	// its own for the payload (the caller's outgoing message, so that the
	// bytes are read and unmasked where they are sent from), or nil for
	// the Reader's buffer. flags is the message's Flags. The payload of
	// such a message is the caller's; Release ignores it.
	Place func(flags byte, n int) []byte

	placed      []byte // the last payload Place gave, for Release
	partial     []byte
	partialOpen bool
	partialFlag byte
	hdr         [maxHeaderLen]byte
	ctl         [maxControlPayload]byte
}

// Buffers lends byte buffers: Get returns one of length 0 and capacity n
// or more, Put takes back one that nobody uses any more.
type Buffers interface {
	Get(n int) []byte
	Put(b []byte)
}

// Release hands the payload of a message returned by ReadMessage back to
// Buffers once the caller is done with it. Payloads the Reader keeps for
// itself (small messages, control frames) are left alone.
func (rd *Reader) Release(p []byte) {
	if len(p) > 0 && len(rd.placed) > 0 && &p[0] == &rd.placed[0] {
		return
	}
	if rd.Buffers != nil && cap(p) > defaultReassemblyCap {
		rd.Buffers.Put(p[:0])
	}
}

// NewReader reads frames from r.
func NewReader(r *bufio.Reader, maxMessage int64) *Reader {
	return &Reader{r: r, MaxMessage: maxMessage}
}

// ReadMessage returns the next complete message or control frame. The
// payload is valid until the next call. io.EOF means the client closed
// the connection between frames.
func (rd *Reader) ReadMessage() (Message, error) {
	rd.placed = nil
	for {
		b0, payloadLen, mask, err := rd.readHeader()
		if err != nil {
			return Message{}, err
		}
		op := b0 & 0x0F
		fin := b0&finBit != 0
		if op >= OpClose {
			p := rd.ctl[:payloadLen]
			if _, err := io.ReadFull(rd.r, p); err != nil {
				return Message{}, unexpected(err)
			}
			unmaskAt(p, mask)
			return Message{Flags: b0 | finBit, Payload: p}, nil
		}
		if op == OpContinuation && !rd.partialOpen {
			return Message{}, ErrStrayContinuation
		}
		if op != OpContinuation && rd.partialOpen {
			return Message{}, ErrExpectedContinue
		}
		if op != OpContinuation && fin && rd.Place != nil {
			if p := rd.Place(b0|finBit, int(payloadLen)); p != nil {
				return rd.readPlaced(b0|finBit, p[:payloadLen:payloadLen], mask)
			}
		}
		if op != OpContinuation { // a continuation keeps the first frame's flags
			rd.partialFlag = b0
			rd.partial = rd.partial[:0]
			rd.partialOpen = true
		}
		total := int64(len(rd.partial)) + payloadLen
		if rd.MaxMessage > 0 && total > rd.MaxMessage {
			return Message{}, ErrTooBig
		}
		start := len(rd.partial)
		rd.partial = rd.grow(rd.partial, int(payloadLen))
		if _, err := io.ReadFull(rd.r, rd.partial[start:]); err != nil {
			return Message{}, unexpected(err)
		}
		unmaskAt(rd.partial[start:], mask)
		if fin {
			rd.partialOpen = false
			msg := Message{Flags: rd.partialFlag | finBit, Payload: rd.partial}
			if cap(rd.partial) > defaultReassemblyCap {
				rd.partial = nil // one big message does not pin its buffer
			}
			return msg, nil
		}
	}
}

// readPlaced reads a one-frame message's payload into p, which Place gave.
func (rd *Reader) readPlaced(flags byte, p []byte, mask [4]byte) (Message, error) {
	rd.placed = p
	if _, err := io.ReadFull(rd.r, p); err != nil {
		return Message{}, unexpected(err)
	}
	unmaskAt(p, mask)
	return Message{Flags: flags, Payload: p}, nil
}

// readHeader reads and validates one frame header.
func (rd *Reader) readHeader() (b0 byte, n int64, mask [4]byte, err error) {
	h := rd.hdr[:2]
	if _, err = io.ReadFull(rd.r, h); err != nil {
		return // io.EOF here: the client closed between frames
	}
	b0, b1 := h[0], h[1]
	op := b0 & 0x0F
	if (op > OpBinary && op < OpClose) || op > OpPong {
		return 0, 0, mask, ErrBadOpcode
	}
	if b1&maskBit == 0 {
		return 0, 0, mask, ErrUnmasked
	}
	n = int64(b1 & 0x7F)
	switch n {
	case 126:
		if _, err = io.ReadFull(rd.r, rd.hdr[2:4]); err != nil {
			return 0, 0, mask, unexpected(err)
		}
		n = int64(binary.BigEndian.Uint16(rd.hdr[2:4]))
	case 127:
		if _, err = io.ReadFull(rd.r, rd.hdr[2:10]); err != nil {
			return 0, 0, mask, unexpected(err)
		}
		u := binary.BigEndian.Uint64(rd.hdr[2:10])
		if u>>63 != 0 {
			return 0, 0, mask, ErrBadLength
		}
		n = int64(u)
	}
	if op >= OpClose {
		if b0&finBit == 0 {
			return 0, 0, mask, ErrFragmentedControl
		}
		if n > maxControlPayload {
			return 0, 0, mask, ErrControlTooLong
		}
	} else if rd.MaxMessage > 0 && n > rd.MaxMessage {
		return 0, 0, mask, ErrTooBig
	}
	if _, err = io.ReadFull(rd.r, mask[:]); err != nil {
		return 0, 0, mask, unexpected(err)
	}
	return b0, n, mask, nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// grow extends b by n bytes, doubling the capacity as append does, so a
// message of many small fragments costs no more than one copy per byte.
// Buffers past what the Reader keeps come from Buffers when set.
func (rd *Reader) grow(b []byte, n int) []byte {
	if len(b)+n <= cap(b) {
		return b[:len(b)+n]
	}
	size := max(2*cap(b), len(b)+n)
	if rd.Buffers == nil || size <= defaultReassemblyCap {
		nb := make([]byte, len(b)+n, size)
		copy(nb, b)
		return nb
	}
	nb := rd.Buffers.Get(len(b) + n)[:len(b)+n]
	copy(nb, b)
	rd.Release(b) // an earlier buffer of this message
	return nb
}

// unmaskAt XORs p with the masking key, starting at key offset 0 (each
// frame has its own key). Large messages are unmasked in place on their
// way to the worker, so this is a per-byte cost of the bridge: long
// payloads go through crypto/subtle's vectorised XOR against the key
// repeated, short ones eight bytes at a time.
func unmaskAt(p []byte, key [4]byte) {
	if len(p) >= unmaskVectorMin {
		var stream [unmaskStream]byte
		copy(stream[:], key[:])
		for n := len(key); n < len(stream); n *= 2 {
			copy(stream[n:], stream[:n])
		}
		for len(p) >= len(stream) { // len(stream) is a multiple of 4
			subtle.XORBytes(p, p[:len(stream)], stream[:])
			p = p[len(stream):]
		}
		subtle.XORBytes(p, p, stream[:len(p)])
		return
	}
	k32 := binary.LittleEndian.Uint32(key[:])
	k64 := uint64(k32) | uint64(k32)<<32
	i := 0
	for ; i+8 <= len(p); i += 8 {
		binary.LittleEndian.PutUint64(p[i:], binary.LittleEndian.Uint64(p[i:])^k64)
	}
	for ; i < len(p); i++ {
		p[i] ^= key[i&3]
	}
}

// unmaskStream is the key stream's length, and unmaskVectorMin the
// payload length from which it pays to build it.
const (
	unmaskStream    = 2048
	unmaskVectorMin = 1024
)

// AppendHeader appends the header of an unmasked server frame, as
// Mongrel2's websocket_make_header writes it.
func AppendHeader(dst []byte, flags byte, n int) []byte {
	switch {
	case n < 126:
		return append(dst, flags, byte(n))
	case n < 1<<16:
		return append(dst, flags, 126, byte(n>>8), byte(n))
	default:
		dst = append(dst, flags, 127)
		return binary.BigEndian.AppendUint64(dst, uint64(n))
	}
}

// AppendFrame appends one final unmasked frame of opcode op.
func AppendFrame(dst []byte, op byte, payload []byte) []byte {
	dst = AppendHeader(dst, finBit|op, len(payload))
	return append(dst, payload...)
}

// AppendClose appends a close frame with code and reason (cut so the
// payload stays within the 125 bytes a control frame may carry).
func AppendClose(dst []byte, code int, reason string) []byte {
	if len(reason) > maxControlPayload-closeCodeLen {
		reason = reason[:maxControlPayload-closeCodeLen]
	}
	var p [maxControlPayload]byte
	binary.BigEndian.PutUint16(p[:], uint16(code))
	n := copy(p[closeCodeLen:], reason)
	return AppendFrame(dst, OpClose, p[:closeCodeLen+n])
}

// AppendMasked appends one masked frame, as a client sends it (tests and
// client helpers). flags is the whole first byte.
func AppendMasked(dst []byte, flags byte, payload []byte, key [4]byte) []byte {
	n := len(payload)
	switch {
	case n < 126:
		dst = append(dst, flags, maskBit|byte(n))
	case n < 1<<16:
		dst = append(dst, flags, maskBit|126, byte(n>>8), byte(n))
	default:
		dst = append(dst, flags, maskBit|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	dst = append(dst, key[:]...)
	start := len(dst)
	dst = append(dst, payload...)
	unmaskAt(dst[start:], key)
	return dst
}

// ParseClose splits a close payload into code and reason. An empty
// payload is CloseNoStatus; a one-byte payload, a reserved code or a
// reason that is not UTF-8 are errors.
func ParseClose(p []byte) (int, string, error) {
	if len(p) == 0 {
		return CloseNoStatus, "", nil
	}
	if len(p) < closeCodeLen {
		return 0, "", fmt.Errorf("websocket: close payload of %d byte", len(p))
	}
	code := int(binary.BigEndian.Uint16(p))
	if !validCloseCode(code) {
		return code, "", fmt.Errorf("websocket: close code %d may not be sent", code)
	}
	if !utf8.Valid(p[closeCodeLen:]) {
		return code, "", errors.New("websocket: close reason is not UTF-8")
	}
	return code, string(p[closeCodeLen:]), nil
}

// validCloseCode: RFC 6455 section 7.4 and the IANA registry.
func validCloseCode(c int) bool {
	switch {
	case c >= 1000 && c <= 1003, c >= 1007 && c <= 1014:
		return true
	case c >= 3000 && c <= 4999:
		return true
	}
	return false
}

// Unmasked frames a server sends can be read back with ReadServerFrame
// (tests and client helpers).

// ReadServerFrame reads one unmasked frame: its first byte and payload.
func ReadServerFrame(r *bufio.Reader, maxPayload int64) (byte, []byte, error) {
	var h [10]byte
	if _, err := io.ReadFull(r, h[:2]); err != nil {
		return 0, nil, err
	}
	if h[1]&maskBit != 0 {
		return 0, nil, errors.New("websocket: server frame is masked")
	}
	n := int64(h[1] & 0x7F)
	switch n {
	case 126:
		if _, err := io.ReadFull(r, h[2:4]); err != nil {
			return 0, nil, unexpected(err)
		}
		n = int64(binary.BigEndian.Uint16(h[2:4]))
	case 127:
		if _, err := io.ReadFull(r, h[2:10]); err != nil {
			return 0, nil, unexpected(err)
		}
		u := binary.BigEndian.Uint64(h[2:10])
		if u>>63 != 0 {
			return 0, nil, ErrBadLength
		}
		n = int64(u)
	}
	if maxPayload > 0 && n > maxPayload {
		return 0, nil, ErrTooBig
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return 0, nil, unexpected(err)
	}
	return h[0], p, nil
}
