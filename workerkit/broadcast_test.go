package workerkit

import (
	"fmt"
	"net/http"
	"strconv"
	"testing"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

func TestBroadcastFromContext(t *testing.T) {
	f := newTestFE(t)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked, ok := BroadcastFromContext(r.Context())
		fmt.Fprintf(w, "%d %v", asked, ok)
	})
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: h})
	tests := []struct {
		name    string
		headers []mongrel2.Field
		want    string
	}{
		{"not a broadcast", nil, "0 false"},
		{"one of four", []mongrel2.Field{{Name: zmqx.HeaderBroadcast, Values: []string{"4"}}}, "4 true"},
		{"no count", []mongrel2.Field{{Name: zmqx.HeaderBroadcast, Values: []string{"x"}}}, "0 true"},
		// A client's header arrives lower-cased: not the front end's key.
		{"forged by the client", []mongrel2.Field{{Name: "zmqx_broadcast", Values: []string{"4"}}}, "0 false"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			conn := strconv.Itoa(i + 1)
			f.request(conn, treq{headers: tc.headers})
			r := f.readReply(conn, "GET")
			eq(t, "status", r.resp.StatusCode, 200)
			eq(t, "BroadcastFromContext", string(r.body), tc.want)
		})
	}
}
