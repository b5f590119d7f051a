package caddyzmq

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

func TestSessionHeader(t *testing.T) {
	withControl := &transport{control: &controlPlane{}}
	cookie := &Affinity{Source: "cookie", Name: "sid"}
	header := &Affinity{Source: "header", Name: "X-Session"}
	tests := []struct {
		name     string
		affinity *Affinity
		t        *transport
		set      func(r *http.Request)
		want     string // "" = no session key
	}{
		{"cookie", cookie, withControl, func(r *http.Request) { r.AddCookie(&http.Cookie{Name: "sid", Value: "abc"}) }, "abc"},
		{"header", header, withControl, func(r *http.Request) { r.Header.Set("X-Session", "s 1") }, "s 1"},
		{"no key in the request", cookie, withControl, func(*http.Request) {}, ""},
		{"no affinity", nil, withControl, func(r *http.Request) { r.AddCookie(&http.Cookie{Name: "sid", Value: "abc"}) }, ""},
		{"no control channel", cookie, &transport{}, func(r *http.Request) { r.AddCookie(&http.Cookie{Name: "sid", Value: "abc"}) }, ""},
		// The client's own copy of the name arrives lower-cased, and is not
		// the trusted key.
		{"forged by the client", nil, withControl, func(r *http.Request) { r.Header.Set(zmqx.HeaderSession, "forged") }, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			tc.set(r)
			h := &Handler{Affinity: tc.affinity}
			var e mongrel2.HeaderEncoder
			h.encodeHeaders(&e, r, "/", 0, "127.0.0.1", true, time.Time{}, nil, false)
			h.addSessionHeader(&e, r, tc.t)
			msg := mongrel2.AppendRequest(nil, "s", "1", "/", e.Bytes(), nil)
			req, err := mongrel2.ParseRequest(msg)
			if err != nil {
				t.Fatal(err)
			}
			if got := req.Header(zmqx.HeaderSession); got != tc.want {
				t.Errorf("%s = %q, want %q", zmqx.HeaderSession, got, tc.want)
			}
		})
	}
}
