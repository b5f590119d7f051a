package httpreply

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/zmqbridge/caddy-zmq/module/internal/hopbyhop"
)

// A worker's reply keeps its end-to-end fields and loses every hop-by-hop
// one: each field of the shared list, and each it names in Connection.
func TestReplyDropsHopByHopFields(t *testing.T) {
	for _, tc := range []struct {
		name   string
		head   string
		gone   []string
		kept   map[string]string
		preset map[string]string // set by Caddy or the user's config before the reply
	}{
		{
			name: "every listed field",
			head: func() string {
				var b strings.Builder
				for _, f := range hopbyhop.Fields() {
					if f == "Transfer-Encoding" {
						continue // framing: its own case below
					}
					b.WriteString(f + ": x\r\n")
				}
				return b.String()
			}(),
			gone: hopbyhop.Fields(),
		},
		{
			name: "nominated in Connection",
			head: "Connection: keep-alive, X-Secret\r\nX-Secret: s\r\nX-Public: p\r\n",
			gone: []string{"X-Secret", "Connection"},
			kept: map[string]string{"X-Public": "p"},
		},
		{
			name: "nominated, any case, several Connection fields",
			head: "Connection: close\r\nconnection: x-secret , X-OTHER\r\nX-Secret: s\r\nX-Other: o\r\nX-Public: p\r\n",
			gone: []string{"X-Secret", "X-Other"},
			kept: map[string]string{"X-Public": "p"},
		},
		{
			name:   "a Connection token removes only the worker's fields",
			head:   "Connection: Strict-Transport-Security, Server\r\nX-Public: p\r\n",
			preset: map[string]string{"Strict-Transport-Security": "max-age=31536000", "Server": "Caddy"},
			kept:   map[string]string{"Strict-Transport-Security": "max-age=31536000", "Server": "Caddy", "X-Public": "p"},
		},
		{
			name: "end-to-end fields that look alike stay",
			head: "Authorization-Info: a\r\nTrailers: t\r\nUpgrade-Insecure-Requests: 1\r\n",
			kept: map[string]string{"Authorization-Info": "a", "Trailers": "t", "Upgrade-Insecure-Requests": "1"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			for k, v := range tc.preset {
				rec.Header().Set(k, v)
			}
			var rr Reader
			rr.Reset(rec, false)
			if err := rr.Feed([]byte("HTTP/1.1 200 OK\r\n" + tc.head + "Content-Length: 2\r\n\r\nok")); err != nil {
				t.Fatal(err)
			}
			if !rr.Done() || rec.Body.String() != "ok" {
				t.Fatalf("done %v body %q", rr.Done(), rec.Body.String())
			}
			for _, f := range tc.gone {
				if v, ok := rec.Header()[f]; ok {
					t.Errorf("%s reached the client: %q", f, v)
				}
			}
			for k, v := range tc.kept {
				if got := rec.Header().Get(k); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
		})
	}
}

// Transfer-Encoding is framing: it is decoded, never passed on.
func TestReplyTransferEncodingNotPassedOn(t *testing.T) {
	rec := httptest.NewRecorder()
	var rr Reader
	rr.Reset(rec, false)
	if err := rr.Feed([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n2\r\nok\r\n0\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	if rec.Body.String() != "ok" || !rr.Done() {
		t.Fatalf("body %q done %v", rec.Body.String(), rr.Done())
	}
	for _, f := range []string{"Transfer-Encoding", "Trailer"} {
		if v, ok := rec.Header()[f]; ok {
			t.Errorf("%s reached the client: %q", f, v)
		}
	}
}
