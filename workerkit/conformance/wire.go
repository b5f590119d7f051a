package conformance

// The zmqx/1 vocabulary, as this kit speaks it. Every verb and trusted
// header name comes from internal/zmqx, the one package that defines them.

import (
	"strconv"
	"time"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

// requestSpec describes one request the kit sends.
type requestSpec struct {
	method   string
	path     string
	body     []byte // inline body
	window   int64  // ZMQX_WINDOW, 0: absent
	deadline time.Time
	stream   int64 // > 0: ZMQX_BODY stream, with this content-length
	confirm  bool  // ZMQX_CONFIRM: ack
	extra    [][2]string
}

// appendRequest builds a Mongrel2 request frame as a zmqx/1 front end does:
// client headers lower case, then the front end's upper-case keys.
func appendRequest(dst []byte, sender, connID string, r requestSpec) []byte {
	var e mongrel2.HeaderEncoder
	e.Reset(mongrel2.FormatJSON)
	path, query, _ := cutQuery(r.path)
	e.Add("PATH", path)
	e.Add("host", "conformance.test")
	e.Add("accept", "*/*")
	switch {
	case r.stream > 0:
		e.Add("content-length", strconv.FormatInt(r.stream, 10))
	case len(r.body) > 0 || r.method == "POST" || r.method == "PUT":
		e.Add("content-length", strconv.Itoa(len(r.body)))
	}
	e.Add("x-forwarded-for", "192.0.2.1")
	e.Add("METHOD", r.method)
	e.Add("VERSION", "HTTP/1.1")
	e.Add("URI", r.path)
	if query != "" {
		e.Add("QUERY", query)
	}
	e.Add("PATTERN", "/")
	e.Add("URL_SCHEME", "http")
	e.Add("REMOTE_ADDR", "192.0.2.1")
	if r.window > 0 {
		e.Add(zmqx.HeaderWindow, strconv.FormatInt(r.window, 10))
	}
	if !r.deadline.IsZero() {
		e.Add(zmqx.HeaderDeadline, string(zmqx.AppendDeadline(nil, r.deadline)))
	}
	if r.stream > 0 {
		e.Add(zmqx.HeaderBody, zmqx.BodyStream)
	}
	if r.confirm {
		e.Add(zmqx.HeaderConfirm, zmqx.ConfirmAck)
	}
	for _, kv := range r.extra {
		e.Add(kv[0], kv[1])
	}
	body := r.body
	if r.stream > 0 {
		body = nil
	}
	return mongrel2.AppendRequest(dst, sender, connID, path, e.Bytes(), body)
}

func cutQuery(p string) (path, query string, ok bool) {
	for i := 0; i < len(p); i++ {
		if p[i] == '?' {
			return p[:i], p[i+1:], true
		}
	}
	return p, "", false
}

func appendDisconnectNotice(sender, connID string) []byte {
	return mongrel2.AppendDisconnect(nil, sender, connID)
}
