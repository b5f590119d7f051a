package zmqx

import (
	"bytes"
	"errors"
	"math"
)

// Message is one control message, read by Parse. Its slices alias the
// message it was read from.
type Message struct {
	Verb Verb
	// ID is the connection id of CREDIT, UCREDIT, DISCONNECT, BODY,
	// BODYEND and BODYERR.
	ID []byte
	// IDs are the connection ids of ACK, NACK and CONFIRM, space separated; NextID
	// walks them.
	IDs []byte
	// N is HELLO's max_concurrent, or the bytes of CREDIT and UCREDIT.
	N int64
	// Data is REQ's request frame, or BODY's bytes (which may hold spaces
	// and any byte at all).
	Data []byte
}

var (
	// ErrUnknownVerb: the message is empty or starts with a verb this
	// version does not know. Peers ignore such messages.
	ErrUnknownVerb = errors.New("zmqx: unknown verb")
	// ErrMalformed: the verb is known, its arguments do not match its
	// grammar. Parse still reports the verb.
	ErrMalformed = errors.New("zmqx: malformed arguments")
)

// maxIDLen is the longest connection id: the decimal digits of a uint64.
const maxIDLen = 20

// Parse reads one control message without allocating. HELLO and the verbs
// that take no arguments ignore any further arguments, so that a later
// version can add some; every other message must match its grammar exactly.
func Parse(msg []byte) (Message, error) {
	word, args, _ := bytes.Cut(msg, []byte{' '})
	m := Message{Verb: lookupVerb(word)}
	ok := true
	switch m.Verb {
	case VerbUnknown:
		return m, ErrUnknownVerb
	case Heartbeat, Bye, Reset, Pause, Resume, Welcome:
	case Hello:
		n, _, _ := bytes.Cut(args, []byte{' '})
		m.N, ok = parseCount(n)
	case Ack, Nack, Confirm:
		m.IDs, ok = args, validIDs(args)
	case Credit, UploadCredit:
		id, n, found := bytes.Cut(args, []byte{' '})
		m.ID = id
		m.N, ok = parseCount(n)
		ok = found && ok && m.N > 0 && ValidConnID(id)
	case Disconnect, BodyEnd, BodyErr:
		m.ID, ok = args, ValidConnID(args)
	case Req:
		m.Data, ok = args, len(args) > 0
	case Body:
		// BODY <conn_id> with no bytes is an empty chunk.
		m.ID, m.Data, _ = bytes.Cut(args, []byte{' '})
		ok = ValidConnID(m.ID)
	}
	if !ok {
		return m, ErrMalformed
	}
	return m, nil
}

// ValidConnID reports whether b is a connection id: 1 to 20 decimal digits.
func ValidConnID(b []byte) bool {
	if len(b) == 0 || len(b) > maxIDLen {
		return false
	}
	return isDigits(b)
}

// NextID returns the first connection id of an ACK's or NACK's ids and the
// rest; id is nil when there are none left.
func NextID(ids []byte) (id, rest []byte) {
	if len(ids) == 0 {
		return nil, nil
	}
	id, rest, _ = bytes.Cut(ids, []byte{' '})
	return id, rest
}

// validIDs reports whether ids is one or more connection ids, single-space
// separated.
func validIDs(ids []byte) bool {
	if len(ids) == 0 || ids[len(ids)-1] == ' ' {
		return false
	}
	for id, rest := NextID(ids); id != nil; id, rest = NextID(rest) {
		if !ValidConnID(id) {
			return false
		}
	}
	return true
}

// parseCount reads a non-negative decimal that fits an int64: digits only,
// no sign.
func parseCount(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 19 || !isDigits(b) {
		return 0, false
	}
	var n uint64 // 19 digits cannot overflow it
	for _, c := range b {
		n = n*10 + uint64(c-'0')
	}
	if n > math.MaxInt64 {
		return 0, false
	}
	return int64(n), true
}

func isDigits(b []byte) bool {
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
