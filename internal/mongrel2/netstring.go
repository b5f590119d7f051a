package mongrel2

import (
	"errors"
	"strconv"
)

// maxLenDigits bounds the length prefix of a netstring: 10 digits is 9.3 GiB,
// well past anything a single ZeroMQ frame carries, and keeps the parse
// overflow-free.
const maxLenDigits = 10

var (
	errShort     = errors.New("mongrel2: truncated frame")
	errLenPrefix = errors.New("mongrel2: bad netstring length")
	errTerm      = errors.New("mongrel2: bad netstring terminator")
)

// splitNetstring reads "LEN:DATA<t>" from the front of b and returns DATA, the
// terminator byte t and the rest of b.
func splitNetstring(b []byte) (data []byte, term byte, rest []byte, err error) {
	n := 0
	i := 0
	for ; i < len(b) && b[i] != ':'; i++ {
		c := b[i]
		if c < '0' || c > '9' || i >= maxLenDigits {
			return nil, 0, nil, errLenPrefix
		}
		n = n*10 + int(c-'0')
	}
	if i == 0 || i == len(b) {
		return nil, 0, nil, errLenPrefix
	}
	// A leading zero is only valid for "0:".
	if b[0] == '0' && i > 1 {
		return nil, 0, nil, errLenPrefix
	}
	start := i + 1
	if len(b)-start < n+1 {
		return nil, 0, nil, errShort
	}
	return b[start : start+n], b[start+n], b[start+n+1:], nil
}

// appendNetstring appends "LEN:data<term>".
func appendNetstring(dst []byte, data []byte, term byte) []byte {
	dst = strconv.AppendInt(dst, int64(len(data)), 10)
	dst = append(dst, ':')
	dst = append(dst, data...)
	return append(dst, term)
}

func appendNetstringString(dst []byte, data string, term byte) []byte {
	dst = strconv.AppendInt(dst, int64(len(data)), 10)
	dst = append(dst, ':')
	dst = append(dst, data...)
	return append(dst, term)
}
