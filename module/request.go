package caddyzmq

import (
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

// requestHopHeaders describe the client's connection to Caddy, not a request
// to a worker; like reverse_proxy, they are not passed on.
var requestHopHeaders = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Te": true,
	"Transfer-Encoding": true, "Upgrade": true, "Trailer": true,
	// Rewritten below from what Caddy knows, never taken from the client.
	"X-Forwarded-For": true, "Content-Length": true,
	"X-Mongrel2-Upload-Start": true, "X-Mongrel2-Upload-Done": true,
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
	for name, values := range r.Header {
		if requestHopHeaders[name] || len(values) == 0 {
			continue
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
		// requestHopHeaders): a handler opens the file they name.
		e.Add(hdrUploadStart, up.path)
		if uploadDone {
			e.Add(hdrUploadDone, up.path)
		}
	}
	e.Add("x-forwarded-for", clientIP)
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
