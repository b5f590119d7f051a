package workerkit

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

var (
	errNoMethod  = errors.New("request has no METHOD")
	errBadMethod = errors.New("request METHOD is not an HTTP token")
)

// buildRequest turns a parsed handler request into what net/http handlers
// expect from a server, so that ordinary handlers run unchanged.
func buildRequest(ctx context.Context, m *mongrel2.Request) (*http.Request, error) {
	var method, version, uri, path, query, scheme, remote, host, broadcast string
	nClient, nValues := 0, 0
	for i := range m.Headers {
		f := &m.Headers[i]
		if !mongrel2.IsServerKey(f.Name) {
			if f.Name != "host" { // the front end lower-cases client names
				nClient++
				nValues += len(f.Values)
			}
			continue
		}
		switch f.Name {
		case "METHOD":
			method = f.Value()
		case "VERSION":
			version = f.Value()
		case "URI":
			uri = f.Value()
		case "PATH":
			path = f.Value()
		case "QUERY":
			query = f.Value()
		case "URL_SCHEME":
			scheme = f.Value()
		case "REMOTE_ADDR":
			remote = f.Value()
		case zmqx.HeaderBroadcast:
			broadcast = f.Value()
		}
	}
	if method == "" {
		return nil, errNoMethod
	}
	if !isToken(method) {
		return nil, errBadMethod
	}

	// One backing array for all values, as net/textproto does: a header map
	// costs one allocation for the values instead of one per header.
	h := make(http.Header, nClient)
	var vals []string
	if nValues > 0 {
		vals = make([]string, 0, nValues)
	}
	for i := range m.Headers {
		f := &m.Headers[i]
		if len(f.Values) == 0 || mongrel2.IsServerKey(f.Name) {
			continue
		}
		k := canonicalKey(f.Name)
		if k == "Host" {
			// net/http moves Host out of the map; handlers look at r.Host.
			host = f.Value()
			continue
		}
		if old, ok := h[k]; ok {
			h[k] = append(old, f.Values...)
			continue
		}
		start := len(vals)
		vals = append(vals, f.Values...)
		h[k] = vals[start:len(vals):len(vals)]
	}

	if uri == "" {
		uri = path
		if uri == "" {
			uri = m.Path
		}
		if query != "" {
			uri += "?" + query
		}
	}
	u, err := url.ParseRequestURI(uri)
	if err != nil {
		return nil, err
	}

	proto := "HTTP/1.1"
	major, minor, ok := http.ParseHTTPVersion(version)
	if ok {
		proto = version
	} else {
		major, minor = 1, 1
	}

	var body io.ReadCloser = http.NoBody
	if len(m.Body) > 0 {
		b := &bodyReader{}
		b.Reset(m.Body)
		body = b
	}

	r := http.Request{
		Method:        method,
		URL:           u,
		Proto:         proto,
		ProtoMajor:    major,
		ProtoMinor:    minor,
		Header:        h,
		Body:          body,
		ContentLength: int64(len(m.Body)),
		Host:          host,
		RequestURI:    uri,
	}
	if remote != "" {
		// Mongrel2 gives the IP only; handlers and loggers split host:port.
		r.RemoteAddr = net.JoinHostPort(remote, "0")
	}
	if scheme == "https" {
		// Handlers test r.TLS != nil to learn that the client used TLS.
		r.TLS = &tls.ConnectionState{}
	}
	if broadcast != "" {
		ctx = withBroadcast(ctx, broadcast) // broadcast.go
	}
	return r.WithContext(ctx), nil
}

// canonicalKeys maps header names as front ends send them (lower case) to
// their canonical form, which is what handlers look up. Canonicalising is a
// good part of building a request with a browser's dozen headers, and it
// allocates for every name net/textproto does not know. Copy-on-write:
// readers take no lock. Bounded, as clients choose the names: once full,
// other names take the ordinary path.
var (
	canonicalKeys   atomic.Pointer[map[string]string]
	canonicalKeysMu sync.Mutex
)

const maxCanonicalKeys = 256

func canonicalKey(name string) string {
	if m := canonicalKeys.Load(); m != nil {
		if k, ok := (*m)[name]; ok {
			return k
		}
	}
	k := http.CanonicalHeaderKey(name)
	canonicalKeysMu.Lock()
	defer canonicalKeysMu.Unlock()
	var old map[string]string
	if p := canonicalKeys.Load(); p != nil {
		old = *p
	}
	if _, ok := old[name]; ok || len(old) >= maxCanonicalKeys {
		return k
	}
	m := make(map[string]string, len(old)+1)
	maps.Copy(m, old)
	// Cloned: name may alias a large buffer.
	m[strings.Clone(name)] = k
	canonicalKeys.Store(&m)
	return k
}

// bodyReader is the request body: the bytes of the request frame. One
// allocation, where io.NopCloser(bytes.NewReader(b)) makes two; it keeps
// bytes.Reader's WriteTo, so io.Copy from it copies once.
type bodyReader struct{ bytes.Reader }

func (*bodyReader) Close() error { return nil }

// isToken reports whether s is an RFC 9110 token (method names, header names).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !tokenChar[s[i]] {
			return false
		}
	}
	return true
}

var tokenChar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()
