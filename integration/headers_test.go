package integration

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// TestHopByHopHeaders: through bin/caddy (plain HTTP/1.1, where a client may
// send them), the hop-by-hop fields of the client's request never reach the
// worker, and those of the worker's reply never reach the client: the
// fields reverse_proxy drops and every field named in Connection.
func TestHopByHopHeaders(t *testing.T) {
	c, _ := caddyWithTestworker(t, "caddyfiles/http-only.Caddyfile", false, nil)
	client := c.Client(modeHTTP)
	defer client.CloseIdleConnections()

	t.Run("request", func(t *testing.T) {
		r := mustDo(t, client, http.MethodGet, c.HTTPURL("/hop"), nil, http.Header{
			"Connection":          {"keep-alive, X-Secret"},
			"X-Secret":            {"attacker-chosen"},
			"Proxy-Authorization": {"Basic dXNlcjpwYXNzd29yZA=="},
			"Proxy-Connection":    {"keep-alive"},
			"Keep-Alive":          {"timeout=5"},
			"Te":                  {"trailers"},
			"Proxy":               {"http://attacker.example:8080"},
			"X-Public":            {"p"},
			"Authorization":       {"Bearer end-to-end"},
		})
		if r.StatusCode != http.StatusOK {
			t.Fatalf("GET /hop: %s %q", r.Status, r.Body)
		}
		e := decodeEcho(t, r)
		for _, name := range []string{"connection", "x-secret", "proxy-authorization", "proxy-connection", "keep-alive", "te", "proxy"} {
			if v, ok := e.Headers[name]; ok {
				t.Errorf("%s reached the worker: %q", name, v)
			}
		}
		for name, want := range map[string]string{"x-public": "p", "authorization": "Bearer end-to-end"} {
			if got := e.Header(name); got != want {
				t.Errorf("worker saw %s = %q, want %q", name, got, want)
			}
		}
	})

	t.Run("reply", func(t *testing.T) {
		q := url.Values{"header": {
			"Connection: X-Leak", "X-Leak: worker-internal", "Proxy-Authenticate: Basic realm=w",
			"Keep-Alive: timeout=5", "Alt-Svc: h3=\":1\"", "Upgrade: websocket", "X-Kept: k",
		}}
		r := mustDo(t, client, http.MethodGet, c.HTTPURL("/reply?"+q.Encode()), nil, nil)
		if r.StatusCode != http.StatusOK || r.Header.Get("X-Worker") != "testworker" {
			t.Fatalf("GET /reply: %s from %q", r.Status, r.Header.Get("X-Worker"))
		}
		for _, name := range []string{"X-Leak", "Proxy-Authenticate", "Keep-Alive", "Alt-Svc", "Upgrade"} {
			if v, ok := r.Header[name]; ok {
				t.Errorf("%s reached the client: %q", name, v)
			}
		}
		if strings.Contains(strings.ToLower(r.Header.Get("Connection")), "x-leak") {
			t.Errorf("the worker's Connection reached the client: %q", r.Header.Get("Connection"))
		}
		if r.Header.Get("X-Kept") != "k" {
			t.Errorf("X-Kept = %q, want k (end-to-end fields must pass)", r.Header.Get("X-Kept"))
		}
	})
}

// TestForwardingHeaders: caddyfiles/trusted-proxies.Caddyfile. A client that
// is not a trusted proxy cannot tell the worker who it is: its
// X-Forwarded-For/-Proto/-Host are replaced by what Caddy knows, its
// X-Real-IP and Forwarded dropped. A peer in trusted_proxies passes them on.
func TestForwardingHeaders(t *testing.T) {
	spoof := http.Header{
		"X-Forwarded-For":   {"203.0.113.66"},
		"X-Forwarded-Proto": {"https"},
		"X-Forwarded-Host":  {"bank.example"},
		"X-Real-Ip":         {"203.0.113.66"},
		"Forwarded":         {"for=203.0.113.66;proto=https;host=bank.example"},
		// CGI-style gateways read this as X-Forwarded-For.
		"X_forwarded_for": {"203.0.113.66"},
	}
	for _, tc := range []struct {
		name    string
		trusted string // TRUSTED_PROXIES; the test client connects from 127.0.0.1
		want    map[string]string
		remote  string // the worker's RemoteAddr
	}{
		{
			name:    "untrusted client",
			trusted: "192.0.2.0/24",
			want: map[string]string{
				"x-forwarded-for": "127.0.0.1", "x-forwarded-proto": "http", "x-real-ip": "", "forwarded": "",
				"x_forwarded_for": "",
			},
			remote: "127.0.0.1:0",
		},
		{
			name:    "trusted proxy",
			trusted: "127.0.0.0/8",
			want: map[string]string{
				"x-forwarded-for": "203.0.113.66, 127.0.0.1", "x-forwarded-proto": "https",
				"x-forwarded-host": "bank.example", "x-real-ip": "203.0.113.66",
				"forwarded": "for=203.0.113.66;proto=https;host=bank.example", "x_forwarded_for": "",
			},
			remote: "203.0.113.66:0",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := caddyWithTestworker(t, "caddyfiles/trusted-proxies.Caddyfile", false,
				map[string]string{"TRUSTED_PROXIES": tc.trusted})
			client := c.Client(modeHTTP)
			defer client.CloseIdleConnections()
			r := mustDo(t, client, http.MethodGet, c.HTTPURL("/who"), nil, spoof)
			if r.StatusCode != http.StatusOK {
				t.Fatalf("GET /who: %s %q", r.Status, r.Body)
			}
			e := decodeEcho(t, r)
			host := strings.TrimPrefix(c.HTTPURL(""), "http://")
			if tc.want["x-forwarded-host"] == "" {
				tc.want["x-forwarded-host"] = host
			}
			for name, want := range tc.want {
				got, ok := e.Headers[name]
				switch {
				case want == "" && ok:
					t.Errorf("%s reached the worker: %q", name, got)
				case want != "" && e.Header(name) != want:
					t.Errorf("worker saw %s = %q, want %q", name, got, want)
				}
			}
			if e.RemoteAddr != tc.remote {
				t.Errorf("worker's RemoteAddr = %q, want %q", e.RemoteAddr, tc.remote)
			}
			if e.TLS {
				t.Error("the worker was told the client used TLS (URL_SCHEME must stay Caddy's own)")
			}
		})
	}
}
