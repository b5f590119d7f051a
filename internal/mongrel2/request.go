package mongrel2

import (
	"bytes"
	"errors"
	"strconv"
)

// Request is one parsed handler request.
type Request struct {
	// Sender is the front end's UUID (Mongrel2 send_ident).
	Sender string
	// ConnID is the connection id: decimal digits, opaque to handlers.
	ConnID string
	// Path is the request path as the front end matched it.
	Path string
	// Headers in wire order. The front end's own keys (upper case) follow
	// the client's (lower case), so the last field of a name is trusted.
	Headers []Field
	// Body aliases the message buffer it was parsed from.
	Body []byte
}

var (
	errNoSender = errors.New("mongrel2: missing sender")
	errNoConnID = errors.New("mongrel2: missing or non-numeric connection id")
	errNoPath   = errors.New("mongrel2: missing path")
	errTrailing = errors.New("mongrel2: bytes after body")
)

// ParseRequest parses one request frame. Body aliases msg.
func ParseRequest(msg []byte) (*Request, error) {
	sender, rest, ok := cutSpace(msg)
	if !ok || len(sender) == 0 {
		return nil, errNoSender
	}
	connID, rest, ok := cutSpace(rest)
	if !ok || !isDigits(connID) {
		return nil, errNoConnID
	}
	path, rest, ok := cutSpace(rest)
	if !ok || len(path) == 0 {
		return nil, errNoPath
	}
	hdr, term, rest, err := splitNetstring(rest)
	if err != nil {
		return nil, err
	}
	var fields []Field
	switch term {
	case ',':
		fields, err = parseJSONHeaderString(string(hdr))
	case '}':
		fields, err = parseTNSHeaders(hdr)
	default:
		err = errTerm
	}
	if err != nil {
		return nil, err
	}
	body, term, rest, err := splitNetstring(rest)
	if err != nil {
		return nil, err
	}
	if term != ',' {
		return nil, errTerm
	}
	if len(rest) != 0 {
		return nil, errTrailing
	}
	// One string for the three leading fields, sliced.
	lead := string(msg[:len(sender)+len(connID)+len(path)+2])
	return &Request{
		Sender:  lead[:len(sender)],
		ConnID:  lead[len(sender)+1 : len(sender)+1+len(connID)],
		Path:    lead[len(sender)+len(connID)+2:],
		Headers: fields,
		Body:    body,
	}, nil
}

// Header returns the last value of the last field named exactly name, or "".
// Names are case sensitive: "METHOD" is the front end's, "method" a client's.
func (r *Request) Header(name string) string {
	for i := len(r.Headers) - 1; i >= 0; i-- {
		if r.Headers[i].Name == name {
			return r.Headers[i].Value()
		}
	}
	return ""
}

// IsDisconnect reports whether r is the front end's notice that the client
// connection went away.
func (r *Request) IsDisconnect() bool {
	return r.Header("METHOD") == "JSON" && isDisconnectBody(r.Body)
}

func isDisconnectBody(b []byte) bool {
	fields, err := parseJSONHeaders(b)
	if err != nil {
		return false
	}
	for _, f := range fields {
		if f.Name == "type" && f.Value() == "disconnect" {
			return true
		}
	}
	return false
}

// AppendRequest appends a complete request frame. headers is a block made by
// HeaderEncoder (a JSON object or a tnetstring dict).
func AppendRequest(dst []byte, sender, connID, path string, headers, body []byte) []byte {
	dst = AppendRequestHead(dst, sender, connID, path, headers, len(body))
	dst = append(dst, body...)
	return append(dst, ',')
}

// AppendRequestHead appends what AppendRequest writes before the bytes of
// a body of n bytes, for a caller that places the body after it (read
// straight from the client) and then the ',' that ends the frame.
func AppendRequestHead(dst []byte, sender, connID, path string, headers []byte, n int) []byte {
	dst = append(dst, sender...)
	dst = append(dst, ' ')
	dst = append(dst, connID...)
	dst = append(dst, ' ')
	dst = append(dst, path...)
	dst = append(dst, ' ')
	if len(headers) > 0 && headers[0] == '{' {
		dst = appendNetstring(dst, headers, ',')
	} else {
		dst = append(dst, headers...)
	}
	dst = strconv.AppendInt(dst, int64(n), 10)
	return append(dst, ':')
}

// disconnectTail is what follows "UUID ID " in a disconnect notice, exactly
// as Mongrel2 writes it.
const disconnectTail = `@* 17:{"METHOD":"JSON"},21:{"type":"disconnect"},`

// AppendDisconnect appends Mongrel2's disconnect notice for one connection.
func AppendDisconnect(dst []byte, sender, connID string) []byte {
	dst = append(dst, sender...)
	dst = append(dst, ' ')
	dst = append(dst, connID...)
	dst = append(dst, ' ')
	return append(dst, disconnectTail...)
}

// AppendUint is strconv.AppendUint, for callers that keep ids as integers.
func AppendUint(dst []byte, id uint64) []byte { return strconv.AppendUint(dst, id, 10) }

func cutSpace(b []byte) (before, after []byte, ok bool) {
	i := bytes.IndexByte(b, ' ')
	if i < 0 {
		return nil, nil, false
	}
	return b[:i], b[i+1:], true
}

func isDigits(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
