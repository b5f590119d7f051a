package main

import (
	"net/http"
	"regexp"
	"strconv"
	"testing"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
)

// httpRequest is a front end's HTTP request with the given URI and one
// client header.
func httpRequest(t *testing.T, uri, header, value string) *mongrel2.Request {
	t.Helper()
	var h mongrel2.HeaderEncoder
	h.Reset(mongrel2.FormatJSON)
	h.Add("METHOD", "GET")
	h.Add("VERSION", "HTTP/1.1")
	h.Add("URI", uri)
	h.Add("host", "example.com")
	h.Add("URL_SCHEME", "http")
	h.Add("ZMQX_DEADLINE", "1") // a front end's key the floor does not know: not a header
	h.Add(header, value)
	r, err := mongrel2.ParseRequest(mongrel2.AppendRequest(nil, sender, "9", uri, h.Bytes(), nil))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

var dateLine = regexp.MustCompile(`\r\nDate: [^\r]*\r\n`)

// The handler floor must put the fixed floor's bytes on the wire (the bench
// compares the two), and give its handler the request as net/http would.
func TestHandlerFloor(t *testing.T) {
	echo := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Seen", r.Method+" "+r.Host+" "+r.URL.Path+" "+r.URL.RawQuery+" "+r.Header.Get("X-Token")+" "+strconv.Itoa(len(r.Header)))
		w.WriteHeader(http.StatusTeapot)
	}
	for _, tc := range []struct {
		name    string
		h       http.HandlerFunc
		uri     string
		want    string // the reply with its Date line taken out
		wantErr bool
	}{
		{"hello", hello, "/", "", false},
		{"request fields", echo, "/a/b?x=1", "HTTP/1.1 418 I'm a teapot\r\nX-Seen: GET example.com /a/b x=1 t0k 1\r\nContent-Length: 0\r\n\r\n", false},
		{"bad uri", hello, "no-slash", "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var fixed answerer
			a := answerer{handler: &handlerFloor{h: tc.h}}
			req := httpRequest(t, tc.uri, "x-token", "t0k")
			a.answer(req) // reused buffers in play
			got, _ := a.answer(req)
			want := tc.want
			if want == "" {
				w, _ := fixed.answer(req)
				want = dateLine.ReplaceAllString(string(w), "\r\n")
			} else {
				want = string(mongrel2.AppendReplyOne(nil, sender, "9", []byte(want)))
			}
			if !tc.wantErr && !dateLine.Match(got) {
				t.Fatalf("no Date line in %q", got)
			}
			if s := dateLine.ReplaceAllString(string(got), "\r\n"); s != want {
				t.Fatalf("reply\n%q\nwant\n%q", s, want)
			}
		})
	}
}
