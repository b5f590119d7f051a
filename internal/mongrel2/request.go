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
	p, err := SplitRequest(msg)
	if err != nil {
		return nil, err
	}
	fields, err := p.ParseHeaders()
	if err != nil {
		return nil, err
	}
	// One string for the three leading fields, sliced.
	lead := string(msg[:len(p.Sender)+len(p.ConnID)+len(p.Path)+2])
	return &Request{
		Sender:  lead[:len(p.Sender)],
		ConnID:  lead[len(p.Sender)+1 : len(p.Sender)+1+len(p.ConnID)],
		Path:    lead[len(p.Sender)+len(p.ConnID)+2:],
		Headers: fields,
		Body:    p.Body,
	}, nil
}

// Parts are the pieces of a request frame, its header block not parsed
// yet. All alias the frame.
type Parts struct {
	Sender, ConnID, Path []byte
	// Headers is the header block's payload: a JSON object, or a
	// tnetstring dict's contents.
	Headers []byte
	Body    []byte
	// headerTerm is the header block's netstring terminator: ',' JSON,
	// '}' a tnetstring dict.
	headerTerm byte
}

// SplitRequest checks a request frame's framing and splits it, leaving its
// header block unparsed: a caller that parsed the same bytes before (a
// WebSocket's messages repeat their handshake's headers) need not parse
// them again.
func SplitRequest(msg []byte) (Parts, error) {
	var p Parts
	sender, rest, ok := cutSpace(msg)
	if !ok || len(sender) == 0 {
		return p, errNoSender
	}
	connID, rest, ok := cutSpace(rest)
	if !ok || !isDigits(connID) {
		return p, errNoConnID
	}
	path, rest, ok := cutSpace(rest)
	if !ok || len(path) == 0 {
		return p, errNoPath
	}
	hdr, hterm, rest, err := splitNetstring(rest)
	if err != nil {
		return p, err
	}
	if hterm != ',' && hterm != '}' {
		return p, errTerm
	}
	body, term, rest, err := splitNetstring(rest)
	if err != nil {
		return p, err
	}
	if term != ',' {
		return p, errTerm
	}
	if len(rest) != 0 {
		return p, errTrailing
	}
	return Parts{Sender: sender, ConnID: connID, Path: path, Headers: hdr, Body: body, headerTerm: hterm}, nil
}

// TNetstringHeaders reports whether the header block is a tnetstring dict
// (else JSON).
func (p Parts) TNetstringHeaders() bool { return p.headerTerm == '}' }

// ParseHeaders parses the header block, in wire order.
func (p Parts) ParseHeaders() ([]Field, error) {
	if p.headerTerm == '}' {
		return parseTNSHeaders(p.Headers)
	}
	return parseJSONHeaderString(string(p.Headers))
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

// IsServerKey tells the front end's own (trusted, upper case) header keys,
// such as METHOD, URI and REMOTE_ADDR, from the client's headers, which the
// front end lower-cases. Only the former may decide method, URL and
// addresses; a client must not be able to forge them.
func IsServerKey(name string) bool {
	upper := false
	for i := 0; i < len(name); i++ {
		c := name[i]
		if 'a' <= c && c <= 'z' {
			return false
		}
		if 'A' <= c && c <= 'Z' {
			upper = true
		}
	}
	return upper
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
