// Package httpreply turns the raw HTTP/1.x response stream that a Mongrel2
// handler writes, in as many reply frames as it likes, into calls on an
// http.ResponseWriter. It has no dependency on Caddy or ZeroMQ, so that its
// fuzz target builds and runs fast.
package httpreply

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"strconv"

	"golang.org/x/net/http/httpguts"

	"github.com/zmqbridge/caddy-zmq/module/internal/hopbyhop"
)

// MaxHeadSize bounds the status line plus headers of a worker's reply.
const MaxHeadSize = 64 << 10

// maxChunkLine bounds one chunk-size line (size plus extensions).
const maxChunkLine = 4 << 10

// Errors a reply stream can end with. Before the head is written they become
// a 502 for the client; after it the client connection is aborted.
var (
	errHeadTooLarge = errors.New("response head larger than 64 KiB")
	errClosedEarly  = errors.New("worker closed the connection before the response was complete")
)

type framing uint8

const (
	framingNone framing = iota
	framingLength
	framingChunked
	framingClose
)

type chunkState uint8

const (
	chunkSize chunkState = iota
	chunkData
	chunkDataEnd
	chunkTrailer
)

// responseReader turns the raw HTTP/1.x byte stream that a Mongrel2 handler
// writes, in as many reply frames as it likes, into calls on an
// http.ResponseWriter, so that Caddy can serve it over HTTP/1.1, 2 or 3.
// It is fed incrementally and never blocks.
type Reader struct {
	w           http.ResponseWriter
	headRequest bool

	head       []byte // partial head, while it is still arriving
	headDone   bool
	status     int
	framing    framing
	remaining  int64 // framingLength: body bytes still due; chunkData: bytes of this chunk
	chunkState chunkState
	line       []byte // partial chunk-size or trailer line
	pairs      []headerPair
	done       bool
	written    int64
}

type headerPair struct {
	key   string
	value []byte
}

// Reset prepares the reader for one response, written to w; headRequest
// says the response has no body whatever its headers say.
func (rr *Reader) Reset(w http.ResponseWriter, headRequest bool) { rr.reset(w, headRequest) }

// Feed consumes one reply frame; an empty frame is Mongrel2's close. Errors
// that wrap ClientError come from writing to the client; others are the
// worker's fault.
func (rr *Reader) Feed(p []byte) error { return rr.feed(p) }

// HeadDone reports whether the status and headers were written.
func (rr *Reader) HeadDone() bool { return rr.headDone }

// Done reports whether the whole response was written.
func (rr *Reader) Done() bool { return rr.done }

// Release drops the reference to the ResponseWriter (pooled readers).
func (rr *Reader) Release() { rr.w = nil }

func (rr *Reader) reset(w http.ResponseWriter, headRequest bool) {
	*rr = Reader{w: w, headRequest: headRequest, head: rr.head[:0], line: rr.line[:0], pairs: rr.pairs[:0]}
}

// feed consumes one reply frame. An empty frame is Mongrel2's close.
func (rr *Reader) feed(p []byte) error {
	if rr.done {
		return nil
	}
	if len(p) == 0 {
		return rr.close()
	}
	if !rr.headDone {
		var err error
		p, err = rr.readHead(p)
		if err != nil || !rr.headDone || rr.done {
			return err
		}
	}
	return rr.body(p)
}

func (rr *Reader) close() error {
	if rr.headDone && rr.framing == framingClose {
		rr.done = true
		return nil
	}
	return errClosedEarly
}

// readHead accumulates the head and, once complete, writes status and
// headers. It returns what follows the head in p.
func (rr *Reader) readHead(p []byte) ([]byte, error) {
	for {
		var head []byte
		var rest []byte
		if len(rr.head) == 0 {
			// Common case: the whole head is in this frame; no copy.
			end := HeadEnd(p)
			if end < 0 {
				if len(p) > MaxHeadSize {
					return nil, errHeadTooLarge
				}
				rr.head = append(rr.head, p...)
				return nil, nil
			}
			head, rest = p[:end], p[end:]
		} else {
			old := len(rr.head)
			rr.head = append(rr.head, p...)
			end := HeadEnd(rr.head)
			if end < 0 {
				if len(rr.head) > MaxHeadSize {
					return nil, errHeadTooLarge
				}
				return nil, nil
			}
			head, rest = rr.head[:end], p[end-old:]
		}
		if len(head) > MaxHeadSize {
			return nil, errHeadTooLarge
		}
		interim, err := rr.writeHead(head, len(rest))
		rr.head = rr.head[:0]
		if err != nil {
			return nil, err
		}
		if !interim {
			return rest, nil
		}
		// A 1xx response came first: the real one follows.
		if len(rest) == 0 {
			return nil, nil
		}
		p = rest
	}
}

// HeadEnd returns the index just past the blank line ending the head, or -1.
// Bare LF line endings are accepted, as net/http does.
func HeadEnd(b []byte) int {
	for i := 0; ; {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return -1
		}
		i += j + 1
		if i < len(b) && b[i] == '\n' {
			return i + 1
		}
		if i+1 < len(b) && b[i] == '\r' && b[i+1] == '\n' {
			return i + 2
		}
	}
}

// nextLine splits off one line, without its CRLF or LF.
func nextLine(b []byte) (line, rest []byte) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return b, nil
	}
	line, rest = b[:i], b[i+1:]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, rest
}

// writeHead parses a complete head and writes it to the client. interim
// reports a 1xx response, after which another head follows.
func (rr *Reader) writeHead(head []byte, bodyInFrame int) (interim bool, err error) {
	statusLine, rest := nextLine(head)
	status, err := parseStatusLine(statusLine)
	if err != nil {
		return false, err
	}
	if status >= 100 && status < 200 {
		if status == http.StatusSwitchingProtocols {
			return false, errors.New("101 Switching Protocols is not supported")
		}
	}
	var contentLength int64 = -1
	chunked := false
	// Headers are collected first and written only once the whole head is
	// valid, so a bad reply leaves the client's header map untouched.
	pairs := rr.pairs[:0]
	var connection []string // the worker's Connection values
	for {
		var line []byte
		line, rest = nextLine(rest)
		if len(line) == 0 {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			return false, errors.New("obsolete header line folding")
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return false, fmt.Errorf("malformed header line %q", truncate(line))
		}
		name := line[:colon]
		value := bytes.TrimSpace(line[colon+1:])
		if !validHeaderName(name) || !httpguts.ValidHeaderFieldValue(string(value)) {
			return false, fmt.Errorf("invalid header %q", truncate(line))
		}
		if status < 200 {
			continue // 1xx headers are not forwarded
		}
		key := canonicalKey(name)
		switch key {
		case "Content-Length":
			n, err := strconv.ParseInt(string(value), 10, 64)
			if err != nil || n < 0 || (contentLength >= 0 && n != contentLength) {
				return false, fmt.Errorf("invalid Content-Length %q", truncate(value))
			}
			contentLength = n
			continue
		case "Transfer-Encoding":
			// Only the last coding decides the framing; chunked is the
			// only one an HTTP/1.1 server may send last.
			if bytes.EqualFold(lastToken(value), []byte("chunked")) {
				chunked = true
			} else {
				return false, fmt.Errorf("unsupported Transfer-Encoding %q", truncate(value))
			}
			continue
		case "Connection":
			connection = append(connection, string(value))
			continue
		}
		if hopbyhop.Is(key) {
			continue // describes the worker's hop, not the client's
		}
		pairs = append(pairs, headerPair{key, value})
	}
	rr.pairs = pairs
	if status < 200 {
		return true, nil
	}
	h := rr.w.Header()
	for _, p := range pairs {
		// Fields the worker named in Connection are hop-by-hop too. Only
		// the worker's are dropped: a Connection token must not remove a
		// header Caddy or the user's config set (HSTS, say).
		if hopbyhop.Nominated(connection, p.key) {
			continue
		}
		h[p.key] = append(h[p.key], internValue(p.key, p.value))
	}
	clear(pairs)
	rr.status = status
	rr.headDone = true
	switch {
	case rr.headRequest || status == http.StatusNoContent || status == http.StatusNotModified:
		// No body follows; a HEAD or 304 still tells the client the size.
		if contentLength >= 0 && status != http.StatusNoContent {
			h["Content-Length"] = []string{strconv.FormatInt(contentLength, 10)}
		}
		rr.framing = framingNone
		rr.done = true
	case chunked:
		rr.framing = framingChunked
	case contentLength >= 0:
		rr.framing = framingLength
		rr.remaining = contentLength
		// A small body that is all in this frame is written before the
		// handler returns, and net/http sets its Content-Length itself;
		// otherwise say it, or the client would get it chunked.
		if contentLength > smallBody || contentLength > int64(bodyInFrame) {
			h["Content-Length"] = []string{strconv.FormatInt(contentLength, 10)}
		}
		if contentLength == 0 {
			rr.done = true
		}
	default:
		rr.framing = framingClose
	}
	rr.w.WriteHeader(status)
	return false, nil
}

func parseStatusLine(line []byte) (int, error) {
	// "HTTP/1.1 200 OK"; the reason phrase is optional.
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return 0, fmt.Errorf("malformed status line %q", truncate(line))
	}
	code := line[9:12]
	if len(line) > 12 && line[12] != ' ' {
		return 0, fmt.Errorf("malformed status line %q", truncate(line))
	}
	status := 0
	for _, c := range code {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("malformed status code %q", code)
		}
		status = status*10 + int(c-'0')
	}
	if status < 100 || status > 599 {
		return 0, fmt.Errorf("status code %d out of range", status)
	}
	return status, nil
}

// body writes body bytes, decoding the worker's framing.
func (rr *Reader) body(p []byte) error {
	switch rr.framing {
	case framingNone:
		return nil
	case framingClose:
		return rr.write(p)
	case framingLength:
		if int64(len(p)) > rr.remaining {
			p = p[:rr.remaining] // anything past Content-Length is not ours to send
		}
		rr.remaining -= int64(len(p))
		if rr.remaining == 0 {
			rr.done = true
		}
		return rr.write(p)
	}
	return rr.chunked(p)
}

func (rr *Reader) write(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	n, err := rr.w.Write(p)
	rr.written += int64(n)
	if err != nil {
		return ClientError{err}
	}
	return nil
}

// chunked decodes a chunked body incrementally.
func (rr *Reader) chunked(p []byte) error {
	for len(p) > 0 && !rr.done {
		switch rr.chunkState {
		case chunkData:
			n := int64(len(p))
			if n > rr.remaining {
				n = rr.remaining
			}
			if err := rr.write(p[:n]); err != nil {
				return err
			}
			p = p[n:]
			rr.remaining -= n
			if rr.remaining == 0 {
				rr.chunkState = chunkDataEnd
			}
		case chunkSize, chunkDataEnd, chunkTrailer:
			line, rest, complete := rr.takeLine(p)
			p = rest
			if !complete {
				if len(rr.line) > maxChunkLine {
					return errors.New("chunk line too long")
				}
				continue
			}
			if err := rr.chunkLine(line); err != nil {
				return err
			}
			rr.line = rr.line[:0]
		}
	}
	return nil
}

// takeLine returns a complete line (buffered across frames when split).
func (rr *Reader) takeLine(p []byte) (line, rest []byte, complete bool) {
	i := bytes.IndexByte(p, '\n')
	if i < 0 {
		rr.line = append(rr.line, p...)
		return nil, nil, false
	}
	if len(rr.line) > 0 {
		rr.line = append(rr.line, p[:i]...)
		line = rr.line
	} else {
		line = p[:i]
	}
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, p[i+1:], true
}

func (rr *Reader) chunkLine(line []byte) error {
	switch rr.chunkState {
	case chunkDataEnd:
		if len(line) != 0 {
			return errors.New("chunk data not followed by CRLF")
		}
		rr.chunkState = chunkSize
	case chunkSize:
		if i := bytes.IndexByte(line, ';'); i >= 0 {
			line = line[:i] // chunk extensions are ignored
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 || len(line) > 15 {
			return fmt.Errorf("invalid chunk size %q", truncate(line))
		}
		var n int64
		for _, c := range line {
			var d byte
			switch {
			case c >= '0' && c <= '9':
				d = c - '0'
			case c >= 'a' && c <= 'f':
				d = c - 'a' + 10
			case c >= 'A' && c <= 'F':
				d = c - 'A' + 10
			default:
				return fmt.Errorf("invalid chunk size %q", truncate(line))
			}
			n = n<<4 | int64(d)
		}
		if n == 0 {
			rr.chunkState = chunkTrailer
		} else {
			rr.remaining = n
			rr.chunkState = chunkData
		}
	case chunkTrailer:
		// Trailers are dropped; the empty line ends the body.
		if len(line) == 0 {
			rr.done = true
		}
	}
	return nil
}

// ClientError marks a failure to write to the client (it went away), as
// opposed to a fault of the worker.
type ClientError struct{ Err error }

func (e ClientError) Error() string { return "writing to client: " + e.Err.Error() }
func (e ClientError) Unwrap() error { return e.Err }

func truncate(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}

func lastToken(v []byte) []byte {
	if i := bytes.LastIndexByte(v, ','); i >= 0 {
		v = v[i+1:]
	}
	return bytes.TrimSpace(v)
}

func validHeaderName(name []byte) bool {
	for _, c := range name {
		if !httpguts.IsTokenRune(rune(c)) {
			return false
		}
	}
	return len(name) > 0
}

// smallBody is below net/http's response buffer (and HTTP/2's first
// frame): such a body written before the handler returns gets an exact
// Content-Length without our help.
const smallBody = 2048

// internValue returns the value as a string, without allocating for the
// values most replies carry.
func internValue(key string, v []byte) string {
	if key == "Content-Type" {
		if s, ok := commonContentTypes[string(v)]; ok {
			return s
		}
	}
	return string(v)
}

var commonContentTypes = func() map[string]string {
	m := map[string]string{}
	for _, v := range []string{
		"text/plain; charset=utf-8", "text/html; charset=utf-8", "application/json",
		"text/event-stream", "application/octet-stream", "text/plain", "text/html",
		"application/json; charset=utf-8", "text/css; charset=utf-8", "application/javascript",
		"image/png", "image/jpeg", "image/svg+xml",
	} {
		m[v] = v
	}
	return m
}()

// canonicalKey is textproto.CanonicalMIMEHeaderKey for a byte slice, with
// the common names of a reply returned without allocating.
func canonicalKey(name []byte) string {
	if k, ok := commonReplyHeaders[string(name)]; ok {
		return k
	}
	return textproto.CanonicalMIMEHeaderKey(string(name))
}

var commonReplyHeaders = func() map[string]string {
	m := map[string]string{}
	for _, k := range []string{
		"Content-Length", "Content-Type", "Transfer-Encoding", "Connection", "Date", "Server",
		"Cache-Control", "Set-Cookie", "Location", "Etag", "Last-Modified", "Expires",
		"Content-Encoding", "Vary", "Keep-Alive", "X-Content-Type-Options", "Access-Control-Allow-Origin",
	} {
		m[k] = k
		m[textproto.CanonicalMIMEHeaderKey(k)] = textproto.CanonicalMIMEHeaderKey(k)
		lower := []byte(k)
		for i, c := range lower {
			if c >= 'A' && c <= 'Z' {
				lower[i] = c + 'a' - 'A'
			}
		}
		m[string(lower)] = textproto.CanonicalMIMEHeaderKey(k)
	}
	return m
}()
