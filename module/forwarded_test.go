package caddyzmq

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
)

// workerView encodes r as the front end does and decodes it as a worker
// would: header name (as sent) to its values.
func workerView(t *testing.T, r *http.Request) map[string][]string {
	t.Helper()
	h := &Handler{Pattern: "/"}
	var e mongrel2.HeaderEncoder
	h.encodeHeaders(&e, r, r.URL.Path, 0, clientIP(r), false, time.Time{}, nil, false)
	msg := mongrel2.AppendRequest(nil, "sender", "1", r.URL.Path, e.Bytes(), nil)
	m, err := mongrel2.ParseRequest(msg)
	if err != nil {
		t.Fatalf("the encoded request does not parse: %v", err)
	}
	seen := map[string][]string{}
	for _, f := range m.Headers {
		if _, dup := seen[f.Name]; dup {
			t.Errorf("header %q encoded twice", f.Name)
		}
		seen[f.Name] = f.Values
	}
	return seen
}

// requestFrom is a request as Caddy's server hands it to a handler: from
// peer, trusted or not per the server's trusted_proxies, with the client IP
// Caddy worked out.
func requestFrom(peer string, trusted bool, clientIP string, header map[string][]string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "http://example.com/p", nil)
	r.RemoteAddr = peer
	for k, v := range header {
		r.Header[http.CanonicalHeaderKey(k)] = v
	}
	vars := map[string]any{caddyhttp.TrustedProxyVarKey: trusted, caddyhttp.ClientIPVarKey: clientIP}
	return r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, vars))
}

func TestHopByHopHeadersNotForwarded(t *testing.T) {
	r := requestFrom("192.0.2.1:5000", false, "192.0.2.1", map[string][]string{
		"Connection":          {"keep-alive, X-Secret", "x-other"},
		"X-Secret":            {"s"},
		"X-Other":             {"o"},
		"Proxy-Authorization": {"Basic c2VjcmV0"},
		"Proxy-Authenticate":  {"Basic"},
		"Proxy-Connection":    {"keep-alive"},
		"Keep-Alive":          {"timeout=5"},
		"Te":                  {"trailers"},
		"Trailer":             {"X-T"},
		"Transfer-Encoding":   {"chunked"},
		"Upgrade":             {"websocket"},
		"Alt-Svc":             {`h3=":443"`},
		"Proxy":               {"http://attacker.example:8080"}, // httpoxy
		"X-Public":            {"p"},
		"Authorization":       {"Bearer t"},
	})
	seen := workerView(t, r)
	for _, name := range []string{"connection", "x-secret", "x-other", "proxy-authorization", "proxy-authenticate",
		"proxy-connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "alt-svc", "proxy"} {
		if v, ok := seen[name]; ok {
			t.Errorf("%s reached the worker: %q", name, v)
		}
	}
	for name, want := range map[string]string{"x-public": "p", "authorization": "Bearer t"} {
		if got := seen[name]; len(got) != 1 || got[0] != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
}

func TestForwardingHeaders(t *testing.T) {
	spoofed := map[string][]string{
		"X-Forwarded-For":   {"6.6.6.6"},
		"X-Forwarded-Proto": {"https"},
		"X-Forwarded-Host":  {"evil.example"},
		"X-Real-Ip":         {"6.6.6.6"},
		"Forwarded":         {"for=6.6.6.6;proto=https"},
	}
	for _, tc := range []struct {
		name    string
		r       *http.Request
		want    map[string]string // "" = absent
		tlsConn bool
	}{
		{
			name: "untrusted client: its claims are replaced or dropped",
			r:    requestFrom("192.0.2.1:5000", false, "192.0.2.1", spoofed),
			want: map[string]string{
				"x-forwarded-for": "192.0.2.1", "x-forwarded-proto": "http", "x-forwarded-host": "example.com",
				"x-real-ip": "", "forwarded": "", "REMOTE_ADDR": "192.0.2.1", "URL_SCHEME": "http",
			},
		},
		{
			name: "untrusted client over TLS",
			r:    requestFrom("192.0.2.1:5000", false, "192.0.2.1", spoofed),
			want: map[string]string{
				"x-forwarded-for": "192.0.2.1", "x-forwarded-proto": "https", "x-forwarded-host": "example.com",
				"x-real-ip": "", "forwarded": "", "URL_SCHEME": "https",
			},
			tlsConn: true,
		},
		{
			name: "no forwarding claims",
			r:    requestFrom("[2001:db8::1%eth0]:5000", false, "2001:db8::1", nil),
			want: map[string]string{
				"x-forwarded-for": "2001:db8::1", "x-forwarded-proto": "http", "x-forwarded-host": "example.com",
				"x-real-ip": "", "forwarded": "", "REMOTE_ADDR": "2001:db8::1",
			},
		},
		{
			name: "trusted proxy: its claims are kept, the peer appended",
			r: requestFrom("10.0.0.2:5000", true, "203.0.113.7", map[string][]string{
				"X-Forwarded-For":   {"203.0.113.7", "10.0.0.9"},
				"X-Forwarded-Proto": {"http", "https"},
				"X-Forwarded-Host":  {"shop.example"},
				"X-Real-Ip":         {"203.0.113.7"},
				"Forwarded":         {"for=203.0.113.7;proto=https"},
			}),
			want: map[string]string{
				"x-forwarded-for": "203.0.113.7, 10.0.0.9, 10.0.0.2", "x-forwarded-proto": "https",
				"x-forwarded-host": "shop.example", "x-real-ip": "203.0.113.7",
				"forwarded": "for=203.0.113.7;proto=https", "REMOTE_ADDR": "203.0.113.7", "URL_SCHEME": "http",
			},
		},
		{
			name: "trusted proxy without claims",
			r:    requestFrom("10.0.0.2:5000", true, "10.0.0.2", nil),
			want: map[string]string{
				"x-forwarded-for": "10.0.0.2", "x-forwarded-proto": "http", "x-forwarded-host": "example.com",
			},
		},
		{
			name: "trusted proxy, but the client made X-Forwarded-For hop-by-hop",
			r: requestFrom("10.0.0.2:5000", true, "10.0.0.2", map[string][]string{
				"Connection": {"X-Forwarded-For"}, "X-Forwarded-For": {"6.6.6.6"},
			}),
			want: map[string]string{"x-forwarded-for": "10.0.0.2"},
		},
		{
			name: "trusted Unix socket peer: no address to add",
			r: requestFrom("@", true, "", map[string][]string{
				"X-Forwarded-For": {"203.0.113.7"},
			}),
			want: map[string]string{"x-forwarded-for": "203.0.113.7"},
		},
		{
			name: "untrusted Unix socket peer",
			r:    requestFrom("@", false, "", spoofed),
			want: map[string]string{"x-forwarded-for": "", "x-forwarded-proto": "http", "x-real-ip": "", "forwarded": ""},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.tlsConn {
				tc.r.TLS = &tls.ConnectionState{}
			}
			seen := workerView(t, tc.r)
			for name, want := range tc.want {
				got, ok := seen[name]
				switch {
				case want == "" && ok:
					t.Errorf("%s reached the worker: %q", name, got)
				case want != "" && (len(got) != 1 || got[0] != want):
					t.Errorf("%s = %q, want %q", name, got, want)
				}
			}
		})
	}
}

// A header spelled with underscores is judged as its dashed twin: CGI-style
// gateways merge the two spellings.
func TestUnderscoreTwins(t *testing.T) {
	for _, tc := range []struct {
		trusted bool
		gone    []string
		kept    []string
	}{
		{
			trusted: false,
			gone:    []string{"x_forwarded_for", "x_forwarded_proto", "x_real_ip", "proxy_authorization", "content_length", "x_mongrel2_upload_start"},
			kept:    []string{"x_custom_thing"},
		},
		{
			trusted: true,
			gone:    []string{"x_forwarded_for", "proxy_authorization", "content_length"},
			kept:    []string{"x_real_ip", "x_custom_thing"},
		},
	} {
		t.Run(fmt.Sprintf("trusted=%v", tc.trusted), func(t *testing.T) {
			h := map[string][]string{}
			for _, n := range append(append([]string{}, tc.gone...), tc.kept...) {
				h[n] = []string{"v"}
			}
			seen := workerView(t, requestFrom("192.0.2.1:5000", tc.trusted, "192.0.2.1", h))
			for _, n := range tc.gone {
				if v, ok := seen[n]; ok {
					t.Errorf("%s reached the worker: %q", n, v)
				}
			}
			for _, n := range tc.kept {
				if _, ok := seen[n]; !ok {
					t.Errorf("%s did not reach the worker", n)
				}
			}
		})
	}
}
