package mongrel2

import (
	"bytes"
	"errors"
	"strconv"
)

// MaxReplyTargets is Mongrel2's default limits.handler_targets: the most
// connection ids one reply may name.
const MaxReplyTargets = 128

var (
	errReplySender = errors.New("mongrel2: reply has no sender")
	errReplyIDs    = errors.New("mongrel2: reply id list is malformed")
	errReplySep    = errors.New("mongrel2: reply id list must be followed by a space")
	errTooMany     = errors.New("mongrel2: reply names more than " + strconv.Itoa(MaxReplyTargets) + " connections")
)

// AppendReply appends a reply frame naming one or more connections.
func AppendReply(dst []byte, sender string, connIDs []string, body []byte) []byte {
	dst = append(dst, sender...)
	dst = append(dst, ' ')
	n := len(connIDs) - 1
	for _, id := range connIDs {
		n += len(id)
	}
	if n < 0 {
		n = 0
	}
	dst = strconv.AppendInt(dst, int64(n), 10)
	dst = append(dst, ':')
	for i, id := range connIDs {
		if i > 0 {
			dst = append(dst, ' ')
		}
		dst = append(dst, id...)
	}
	dst = append(dst, ',', ' ')
	return append(dst, body...)
}

// AppendReplyOne is AppendReply for the common single-connection case,
// without a slice allocation at the call site.
func AppendReplyOne(dst []byte, sender, connID string, body []byte) []byte {
	dst = append(dst, sender...)
	dst = append(dst, ' ')
	dst = appendNetstringString(dst, connID, ',')
	dst = append(dst, ' ')
	return append(dst, body...)
}

// ParseReply splits a reply frame. ids is the raw space-separated id list
// (iterate it with NextID); body aliases msg. Every id is checked to be
// decimal digits, and at most MaxReplyTargets ids are accepted.
func ParseReply(msg []byte) (sender, ids, body []byte, err error) {
	i := bytes.IndexByte(msg, ' ')
	if i <= 0 {
		return nil, nil, nil, errReplySender
	}
	sender = msg[:i]
	ids, term, rest, err := splitNetstring(msg[i+1:])
	if err != nil {
		return nil, nil, nil, err
	}
	if term != ',' {
		return nil, nil, nil, errTerm
	}
	if len(rest) == 0 || rest[0] != ' ' {
		return nil, nil, nil, errReplySep
	}
	if len(ids) == 0 || ids[len(ids)-1] == ' ' {
		return nil, nil, nil, errReplyIDs
	}
	n := 0
	for id, r := NextID(ids); id != nil; id, r = NextID(r) {
		if !isDigits(id) {
			return nil, nil, nil, errReplyIDs
		}
		n++
	}
	if n == 0 {
		return nil, nil, nil, errReplyIDs
	}
	if n > MaxReplyTargets {
		return nil, nil, nil, errTooMany
	}
	return sender, ids, rest[1:], nil
}

// NextID returns the first id of a space-separated list and the remainder;
// id is nil when the list is exhausted. Empty items (double spaces) are
// returned as empty, non-nil slices so that callers can reject them; a
// trailing space ends the list.
func NextID(ids []byte) (id, rest []byte) {
	if len(ids) == 0 {
		return nil, nil
	}
	i := bytes.IndexByte(ids, ' ')
	if i < 0 {
		return ids, nil
	}
	return ids[:i], ids[i+1:]
}

// ParseUint parses a decimal connection id. It returns false for anything
// that is not 1..20 digits or overflows uint64.
func ParseUint(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 20 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if n > (1<<64-1-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return n, true
}
