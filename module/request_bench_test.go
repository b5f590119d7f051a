package caddyzmq

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
)

// BenchmarkEncodeHeaders: the header block of a browser's request, the
// per-request cost of the filtering and forwarding rules.
func BenchmarkEncodeHeaders(b *testing.B) {
	r := httptest.NewRequest(http.MethodGet, "http://example.com/page?x=1", nil)
	r.RemoteAddr = "192.0.2.1:5000"
	for k, v := range map[string]string{
		"Accept":          "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
		"Accept-Encoding": "gzip, deflate, br",
		"Accept-Language": "en-US,en;q=0.9",
		"Connection":      "keep-alive",
		"Cookie":          "session=0123456789abcdef",
		"User-Agent":      "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
		"Sec-Fetch-Mode":  "navigate",
		"Referer":         "http://example.com/",
	} {
		r.Header.Set(k, v)
	}
	vars := map[string]any{caddyhttp.TrustedProxyVarKey: false, caddyhttp.ClientIPVarKey: "192.0.2.1"}
	r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, vars))
	h := &Handler{Pattern: "/"}
	var e mongrel2.HeaderEncoder
	ip := clientIP(r)
	b.ReportAllocs()
	for b.Loop() {
		h.encodeHeaders(&e, r, r.URL.Path, 0, ip, false, time.Time{}, nil, false)
	}
}
