package mongrel2

import (
	"errors"
	"strconv"
	"unicode/utf8"
)

// HeaderFormat selects how the header block of a request is encoded, as
// Mongrel2's per-handler `protocol` setting does.
type HeaderFormat uint8

const (
	// FormatJSON encodes headers as a JSON object (Mongrel2's default).
	FormatJSON HeaderFormat = iota
	// FormatTNetString encodes headers as a tnetstring dict.
	FormatTNetString
)

// String returns the name used in configuration files.
func (f HeaderFormat) String() string {
	switch f {
	case FormatJSON:
		return "json"
	case FormatTNetString:
		return "tnetstring"
	}
	return "HeaderFormat(" + strconv.Itoa(int(f)) + ")"
}

// ParseHeaderFormat is the inverse of HeaderFormat.String.
func ParseHeaderFormat(s string) (HeaderFormat, error) {
	switch s {
	case "json", "":
		return FormatJSON, nil
	case "tnetstring", "tnetstrings":
		return FormatTNetString, nil
	}
	return 0, errors.New("mongrel2: unknown header format " + strconv.Quote(s) + " (want json or tnetstring)")
}

// Field is one header. Mongrel2 sends a header that occurs several times as a
// list, so a field may carry more than one value.
type Field struct {
	Name   string
	Values []string
}

// Value returns the last value of the field, the one a "last wins" map keeps.
func (f Field) Value() string {
	if len(f.Values) == 0 {
		return ""
	}
	return f.Values[len(f.Values)-1]
}

// tnsReserve is room kept in front of a tnetstring dict for its length prefix,
// so that Bytes never has to move the payload.
const tnsReserve = maxLenDigits + 1

// HeaderEncoder writes a header block straight from the caller's header
// source, without building an intermediate map. The zero value is not ready:
// call Reset first. An encoder can be reused; keep one per goroutine (or in a
// sync.Pool) so the buffer is recycled.
type HeaderEncoder struct {
	buf    []byte
	format HeaderFormat
	n      int
}

// Reset starts a new, empty block in the given format.
func (e *HeaderEncoder) Reset(format HeaderFormat) {
	e.format = format
	e.n = 0
	if format == FormatJSON {
		e.buf = append(e.buf[:0], '{')
		return
	}
	if cap(e.buf) < tnsReserve {
		e.buf = make([]byte, tnsReserve, 512)
	}
	e.buf = e.buf[:tnsReserve]
}

// Add appends one header with a single value.
func (e *HeaderEncoder) Add(name, value string) {
	if e.format == FormatJSON {
		e.jsonKey(name)
		e.buf = appendJSONString(e.buf, value)
		return
	}
	e.n++
	e.buf = appendNetstringString(e.buf, name, ',')
	e.buf = appendNetstringString(e.buf, value, ',')
}

// AddList appends one header; several values become a list, as Mongrel2 sends
// repeated headers. A single value is written as a plain string.
func (e *HeaderEncoder) AddList(name string, values []string) {
	switch len(values) {
	case 0:
		return
	case 1:
		e.Add(name, values[0])
		return
	}
	if e.format == FormatJSON {
		e.jsonKey(name)
		e.buf = append(e.buf, '[')
		for i, v := range values {
			if i > 0 {
				e.buf = append(e.buf, ',')
			}
			e.buf = appendJSONString(e.buf, v)
		}
		e.buf = append(e.buf, ']')
		return
	}
	e.n++
	e.buf = appendNetstringString(e.buf, name, ',')
	size := 0
	for _, v := range values {
		size += len(strconv.Itoa(len(v))) + 2 + len(v)
	}
	e.buf = strconv.AppendInt(e.buf, int64(size), 10)
	e.buf = append(e.buf, ':')
	for _, v := range values {
		e.buf = appendNetstringString(e.buf, v, ',')
	}
	e.buf = append(e.buf, ']')
}

func (e *HeaderEncoder) jsonKey(name string) {
	if e.n > 0 {
		e.buf = append(e.buf, ',')
	}
	e.n++
	e.buf = appendJSONString(e.buf, name)
	e.buf = append(e.buf, ':')
}

// Bytes finishes the block and returns it. The slice is valid until the next
// Reset; Bytes must be called once per Reset.
func (e *HeaderEncoder) Bytes() []byte {
	if e.format == FormatJSON {
		e.buf = append(e.buf, '}')
		return e.buf
	}
	payload := len(e.buf) - tnsReserve
	var digits [maxLenDigits]byte
	d := strconv.AppendInt(digits[:0], int64(payload), 10)
	start := tnsReserve - 1 - len(d)
	copy(e.buf[start:], d)
	e.buf[tnsReserve-1] = ':'
	e.buf = append(e.buf, '}')
	return e.buf[start:]
}

const hexDigits = "0123456789abcdef"

// appendJSONString writes s as a JSON string. Bytes >= 0x80 pass through
// unchanged, as Mongrel2 does, so header values that are not UTF-8 arrive
// intact; only what JSON forbids is escaped.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		start = i + 1
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

var (
	errJSON = errors.New("mongrel2: malformed JSON header block")
	errTNS  = errors.New("mongrel2: malformed tnetstring header block")
)

// maxHeaderFields bounds the work a hostile header block can cause.
const maxHeaderFields = 4096

// parseJSONHeaders parses a flat JSON object whose values are strings or
// lists of strings (numbers, booleans and null are kept as their literal
// text, for handlers that send them in JSON messages).
func parseJSONHeaders(b []byte) ([]Field, error) {
	return parseJSONHeaderString(string(b))
}

// parseJSONHeaderString parses the block from one string, so that names
// and values without escapes are substrings of it: one allocation for the
// whole block instead of one per string. (They keep the block alive; it is
// small, and never the body.)
func parseJSONHeaderString(b string) ([]Field, error) {
	p := jsonParser{b: b}
	p.ws()
	if !p.eat('{') {
		return nil, errJSON
	}
	fields := make([]Field, 0, 16)
	values := make([]string, 0, 24)
	p.ws()
	if p.eat('}') {
		return fields, p.end()
	}
	for {
		if len(fields) >= maxHeaderFields {
			return nil, errJSON
		}
		p.ws()
		name, ok := p.str()
		if !ok {
			return nil, errJSON
		}
		p.ws()
		if !p.eat(':') {
			return nil, errJSON
		}
		p.ws()
		first := len(values)
		if p.eat('[') {
			p.ws()
			if !p.eat(']') {
				for {
					p.ws()
					v, ok := p.scalar()
					if !ok {
						return nil, errJSON
					}
					values = append(values, v)
					p.ws()
					if p.eat(']') {
						break
					}
					if !p.eat(',') {
						return nil, errJSON
					}
				}
			}
		} else {
			v, ok := p.scalar()
			if !ok {
				return nil, errJSON
			}
			values = append(values, v)
		}
		fields = append(fields, Field{Name: name, Values: values[first:len(values):len(values)]})
		p.ws()
		if p.eat('}') {
			return fields, p.end()
		}
		if !p.eat(',') {
			return nil, errJSON
		}
	}
}

type jsonParser struct {
	b string
	i int
}

func (p *jsonParser) ws() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *jsonParser) eat(c byte) bool {
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

func (p *jsonParser) end() error {
	p.ws()
	if p.i != len(p.b) {
		return errJSON
	}
	return nil
}

// scalar reads a string, or a number/true/false/null as literal text.
func (p *jsonParser) scalar() (string, bool) {
	if p.i < len(p.b) && p.b[p.i] == '"' {
		return p.str()
	}
	start := p.i
	for p.i < len(p.b) {
		c := p.b[p.i]
		if c == ',' || c == '}' || c == ']' || c == ' ' || c == '\t' || c == '\n' || c == '\r' {
			break
		}
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c == '-' || c == '+' || c == '.' || c == 'E') {
			return "", false
		}
		p.i++
	}
	if p.i == start {
		return "", false
	}
	return p.b[start:p.i], true
}

// str reads a JSON string, unescaping it.
func (p *jsonParser) str() (string, bool) {
	if !p.eat('"') {
		return "", false
	}
	start := p.i
	// Fast path: no escapes.
	for p.i < len(p.b) {
		c := p.b[p.i]
		if c == '"' {
			s := p.b[start:p.i]
			p.i++
			return s, true
		}
		if c == '\\' {
			break
		}
		p.i++
	}
	out := make([]byte, 0, p.i-start+16)
	out = append(out, p.b[start:p.i]...)
	for p.i < len(p.b) {
		c := p.b[p.i]
		switch {
		case c == '"':
			p.i++
			return string(out), true
		case c != '\\':
			out = append(out, c)
			p.i++
			continue
		}
		p.i++
		if p.i >= len(p.b) {
			return "", false
		}
		e := p.b[p.i]
		p.i++
		switch e {
		case '"', '\\', '/':
			out = append(out, e)
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r, ok := p.hex4()
			if !ok {
				return "", false
			}
			if r >= 0xD800 && r < 0xDC00 && p.i+1 < len(p.b) && p.b[p.i] == '\\' && p.b[p.i+1] == 'u' {
				save := p.i
				p.i += 2
				r2, ok := p.hex4()
				if ok && r2 >= 0xDC00 && r2 < 0xE000 {
					r = (r-0xD800)<<10 | (r2 - 0xDC00) + 0x10000
				} else {
					p.i = save
				}
			}
			out = utf8.AppendRune(out, r)
		default:
			return "", false
		}
	}
	return "", false
}

func (p *jsonParser) hex4() (rune, bool) {
	if len(p.b)-p.i < 4 {
		return 0, false
	}
	var r rune
	for _, c := range []byte(p.b[p.i : p.i+4]) {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c-'a') + 10
		case c >= 'A' && c <= 'F':
			r |= rune(c-'A') + 10
		default:
			return 0, false
		}
	}
	p.i += 4
	return r, true
}

// parseTNSHeaders parses the payload of a tnetstring dict whose values are
// strings, lists of strings, or other scalars kept as their text.
func parseTNSHeaders(b []byte) ([]Field, error) {
	fields := make([]Field, 0, 16)
	values := make([]string, 0, 24)
	for len(b) > 0 {
		if len(fields) >= maxHeaderFields {
			return nil, errTNS
		}
		key, t, rest, err := splitNetstring(b)
		if err != nil || t != ',' {
			return nil, errTNS
		}
		val, t, rest, err := splitNetstring(rest)
		if err != nil {
			return nil, errTNS
		}
		first := len(values)
		switch t {
		case ',', '#', '^', '!', '~':
			values = append(values, string(val))
		case ']':
			for len(val) > 0 {
				item, it, r, err := splitNetstring(val)
				if err != nil || it == ']' || it == '}' {
					return nil, errTNS
				}
				values = append(values, string(item))
				val = r
			}
		default:
			return nil, errTNS
		}
		fields = append(fields, Field{Name: string(key), Values: values[first:len(values):len(values)]})
		b = rest
	}
	return fields, nil
}
