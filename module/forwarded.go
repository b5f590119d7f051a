package caddyzmq

import (
	"net"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/module/internal/hopbyhop"
)

// forwarding is what the X-Forwarded-* fields tell a worker, worked out as
// reverse_proxy's addForwardedHeaders does: from what Caddy knows of the
// connection, extended by the client's own values only when the peer is in
// the server's trusted_proxies.
type forwarding struct {
	trusted      bool   // the peer is a trusted proxy
	forwardedFor string // X-Forwarded-For: earlier proxies' list (trusted), then the peer
	proto        string // X-Forwarded-Proto
	host         string // X-Forwarded-Host
}

func forwardingOf(r *http.Request, connection []string) forwarding {
	trusted, _ := caddyhttp.GetVar(r.Context(), caddyhttp.TrustedProxyVarKey).(bool)
	f := forwarding{trusted: trusted, forwardedFor: peerIP(r.RemoteAddr), proto: "http", host: r.Host}
	if r.TLS != nil {
		f.proto = "https"
	}
	if !trusted {
		return f
	}
	if prior := priorValues(r.Header, connection, "X-Forwarded-For"); len(prior) > 0 {
		list := strings.Join(prior, ", ")
		if f.forwardedFor != "" {
			list += ", " + f.forwardedFor
		}
		f.forwardedFor = list
	}
	if prior := priorValues(r.Header, connection, "X-Forwarded-Proto"); len(prior) > 0 && prior[len(prior)-1] != "" {
		f.proto = prior[len(prior)-1]
	}
	if prior := priorValues(r.Header, connection, "X-Forwarded-Host"); len(prior) > 0 && prior[len(prior)-1] != "" {
		f.host = prior[len(prior)-1]
	}
	return f
}

// priorValues are the values an earlier proxy gave a forwarding field,
// unless the client made the field hop-by-hop by naming it in Connection.
func priorValues(h http.Header, connection []string, name string) []string {
	if hopbyhop.Nominated(connection, name) {
		return nil
	}
	return h[name]
}

// encode writes the forwarding fields, lower-cased like the client's.
func (f *forwarding) encode(e *mongrel2.HeaderEncoder) {
	if f.forwardedFor != "" {
		e.Add("x-forwarded-for", f.forwardedFor)
	}
	e.Add("x-forwarded-proto", f.proto)
	if f.host != "" {
		e.Add("x-forwarded-host", f.host)
	}
}

// peerIP is the address of the connection's other end, without port or
// IPv6 zone; empty when there is none (a Unix socket).
func peerIP(remoteAddr string) string {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		return ""
	}
	host, _, _ = strings.Cut(host, "%")
	return host
}
