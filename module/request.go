package caddyzmq

import (
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
	"github.com/zmqbridge/caddy-zmq/module/internal/hopbyhop"
)

// headerRule says what becomes of a client header of that name, besides
// the hop-by-hop ones (module/internal/hopbyhop).
type headerRule uint8

const (
	passOn headerRule = iota
	// neverFromClient headers are written by the front end from what
	// Caddy knows, never taken from the client: a handler trusts them (it
	// opens the upload files they name, it logs the address).
	neverFromClient
	// trustedProxyOnly headers tell who the client is, or what it asked
	// for, as an earlier proxy saw it. Any client can write them, so they
	// pass only from a peer in the server's trusted_proxies.
	trustedProxyOnly
)

// clientHeaderRules: one map, so that each client header costs one lookup.
var clientHeaderRules = map[string]headerRule{
	"Content-Length":          neverFromClient,
	"X-Mongrel2-Upload-Start": neverFromClient,
	"X-Mongrel2-Upload-Done":  neverFromClient,
	"X-Forwarded-For":         neverFromClient, // forwarded.go
	"X-Forwarded-Proto":       neverFromClient,
	"X-Forwarded-Host":        neverFromClient,
	"X-Real-Ip":               trustedProxyOnly,
	// httpoxy: a CGI-style gateway (WSGI, Rack, PHP, CGI) behind a
	// Mongrel2 handler turns "Proxy" into HTTP_PROXY, which HTTP libraries
	// take as the proxy for the worker's own outgoing requests; no client
	// has a reason to send it (https://httpoxy.org).
	"Proxy":     neverFromClient,
	"Forwarded": trustedProxyOnly,
}

// ruleFor is the rule for a client header name. A name spelled
// with underscores gets the rule of its dashed twin: CGI-style gateways
// (WSGI, Rack, PHP) turn both X-Forwarded-For and X_Forwarded_For into
// HTTP_X_FORWARDED_FOR, so the underscore spelling must not slip past a rule.
func ruleFor(name string) headerRule {
	if rule, ok := clientHeaderRules[name]; ok || strings.IndexByte(name, '_') < 0 {
		return rule
	}
	dashed := http.CanonicalHeaderKey(strings.ReplaceAll(name, "_", "-"))
	if hopbyhop.Is(dashed) {
		return neverFromClient
	}
	return clientHeaderRules[dashed]
}

// encodeHeaders writes the Mongrel2 header block for r. Client header names
// are lower-cased; the front end's own keys are upper case and come after
// them, so no client header can stand in for METHOD, PATH and the like:
// the names differ, and a parser that keeps the last duplicate sees ours.
func (h *Handler) encodeHeaders(e *mongrel2.HeaderEncoder, r *http.Request, path string, bodyLen int64, clientIP string, control bool, dispatchBy time.Time, up *uploadSpool, uploadDone bool) {
	e.Reset(h.headerFormat)
	// Mongrel2 writes PATH first in its JSON block; keep its byte order.
	e.Add("PATH", path)
	e.Add("host", r.Host)
	// Hop-by-hop fields describe the client's connection to Caddy, not a
	// request to a worker; like reverse_proxy, the front end drops them and
	// every field the client names in Connection.
	connection := r.Header["Connection"]
	fwd := forwardingOf(r, connection)
	for name, values := range r.Header {
		if len(values) == 0 || hopbyhop.Drop(connection, name) {
			continue
		}
		switch ruleFor(name) {
		case neverFromClient:
			continue
		case trustedProxyOnly:
			if !fwd.trusted {
				continue
			}
		}
		e.AddList(lowerHeaderName(name), values)
	}
	if bodyLen > 0 || r.ContentLength > 0 || r.Method == http.MethodPost || r.Method == http.MethodPut || r.Method == http.MethodPatch {
		if bodyLen >= 0 {
			e.Add("content-length", itoa64(bodyLen))
		}
	}
	if up != nil {
		// Written by Caddy, never taken from the client (see
		// clientHeaderRules): a handler opens the file they name.
		e.Add(hdrUploadStart, up.path)
		if uploadDone {
			e.Add(hdrUploadDone, up.path)
		}
	}
	fwd.encode(e)
	e.Add("METHOD", r.Method)
	e.Add("VERSION", protoVersion(r))
	// URI follows the (possibly rewritten) path, as Mongrel2's does.
	if r.URL.RawQuery == "" {
		e.Add("URI", path)
	} else {
		e.Add("URI", path+"?"+r.URL.RawQuery)
	}
	if r.URL.RawQuery != "" {
		e.Add("QUERY", r.URL.RawQuery)
	}
	e.Add("PATTERN", h.Pattern)
	if r.TLS != nil {
		e.Add("URL_SCHEME", "https")
	} else {
		e.Add("URL_SCHEME", "http")
	}
	e.Add("REMOTE_ADDR", clientIP)
	if control {
		e.Add(zmqx.HeaderWindow, h.windowHeader)
	}
	if !dispatchBy.IsZero() {
		var b [20]byte
		e.Add(zmqx.HeaderDeadline, string(zmqx.AppendDeadline(b[:0], dispatchBy)))
	}
}

func protoVersion(r *http.Request) string {
	switch r.ProtoMajor {
	case 2:
		return "HTTP/2.0"
	case 3:
		return "HTTP/3.0"
	}
	if r.ProtoMinor == 0 {
		return "HTTP/1.0"
	}
	return "HTTP/1.1"
}

// clientIP is the address Caddy trusts as the client's (it honours
// trusted_proxies), falling back to the peer address.
func clientIP(r *http.Request) string {
	if v, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && v != "" {
		return v
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// lowerHeaderName lower-cases a canonical header name, without allocating
// for the names most requests carry.
func lowerHeaderName(name string) string {
	if s, ok := lowerCommon[name]; ok {
		return s
	}
	return strings.ToLower(name)
}

var lowerCommon = func() map[string]string {
	m := map[string]string{}
	for _, k := range []string{
		"Accept", "Accept-Encoding", "Accept-Language", "Authorization", "Cache-Control", "Content-Type",
		"Cookie", "Dnt", "If-Modified-Since", "If-None-Match", "Origin", "Pragma", "Priority", "Referer",
		"Sec-Ch-Ua", "Sec-Ch-Ua-Mobile", "Sec-Ch-Ua-Platform", "Sec-Fetch-Dest", "Sec-Fetch-Mode",
		"Sec-Fetch-Site", "Sec-Fetch-User", "Upgrade-Insecure-Requests", "User-Agent", "X-Requested-With",
		"X-Forwarded-Proto", "X-Forwarded-Host", "X-Real-Ip", "Content-Encoding", "Range", "If-Range",
	} {
		m[k] = strings.ToLower(k)
	}
	return m
}()

func itoa64(n int64) string {
	if n >= 0 && n < int64(len(smallInts)) {
		return smallInts[n]
	}
	return string(mongrel2.AppendUint(nil, uint64(n)))
}

func itoa(n int) string {
	if n >= 0 && n < len(smallInts) {
		return smallInts[n]
	}
	return string(mongrel2.AppendUint(nil, uint64(n)))
}

var smallInts = func() []string {
	s := make([]string, 1024)
	for i := range s {
		s[i] = string(mongrel2.AppendUint(nil, uint64(i)))
	}
	return s
}()
