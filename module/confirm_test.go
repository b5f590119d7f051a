package caddyzmq

import (
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	zmq "github.com/pebbe/zmq4"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
)

// TestConfirmAnswersAck: a POST with a dispatch deadline asks its worker to
// wait for CONFIRM (ZMQX_CONFIRM: ack), and Caddy answers the worker's ACK
// with CONFIRM only while it holds the request as that worker's. The fake
// worker takes the first copy without ACKing it (its ACK "lost"), so Caddy
// sends the request again at the deadline; an ACK of the first copy then
// comes late and is answered with DISCONNECT, never CONFIRM, while the ACK
// of the second copy is confirmed. A GET carries no ZMQX_CONFIRM and gets no
// CONFIRM.
func TestConfirmAnswersAck(t *testing.T) {
	ctlEP := "ipc://" + filepath.Join(t.TempDir(), "ctl")
	env := newTestEnv(t, func(h *Handler) {
		h.ControlEndpoint = ctlEP
		h.DispatchTimeout = caddy.Duration(200 * time.Millisecond)
	})
	type seen struct{ path, connID, confirm string }
	reqs := make(chan seen, 16)
	ctl := make(chan string, 64)
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		pull, pub, dealer, closeAll, err := openZmqxWorker(env, ctlEP, "wk-confirm")
		defer closeAll()
		if err != nil {
			t.Error(err)
			return
		}
		poller := zmq.NewPoller()
		poller.Add(pull, zmq.POLLIN)
		poller.Add(dealer, zmq.POLLIN)
		var first, sender string // the id of the first /post copy, taken unacknowledged
		hb := fakeHeartbeat{dealer: dealer}
		for {
			if !hb.beat(stop) {
				return
			}
			polled, _ := poller.Poll(20 * time.Millisecond)
			for _, p := range polled {
				msg, err := p.Socket.RecvBytes(0)
				if err != nil {
					continue
				}
				if p.Socket == dealer {
					ctl <- string(msg)
					if strings.HasPrefix(string(msg), "CONFIRM ") {
						// Run it: reply to every id confirmed.
						for _, id := range strings.Fields(string(msg))[1:] {
							pub.SendBytes(mongrel2.AppendReplyOne(nil, sender, id, okReply("done")[0]), 0)
						}
					}
					continue
				}
				req, err := mongrel2.ParseRequest(msg)
				if err != nil || req.IsDisconnect() {
					continue
				}
				reqs <- seen{req.Path, req.ConnID, req.Header("ZMQX_CONFIRM")}
				sender = req.Sender
				switch {
				case req.Path == "/post" && first == "":
					first = req.ConnID // its ACK is "lost"
				case req.Path == "/post":
					// The late ACK of the first copy, then this one's.
					dealer.SendBytes([]byte("ACK "+first), 0)
					dealer.SendBytes([]byte("ACK "+req.ConnID), 0)
				default:
					dealer.SendBytes([]byte("ACK "+req.ConnID), 0)
					pub.SendBytes(mongrel2.AppendReplyOne(nil, req.Sender, req.ConnID, okReply("done")[0]), 0)
				}
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	env.waitForWorker(t)
	env.waitDeadlines(t)
	for len(reqs) > 0 {
		<-reqs // the readiness probes
	}

	resp, err := http.Get(env.srv.URL + "/get")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if g := <-reqs; g.confirm != "" {
		t.Errorf("GET carried ZMQX_CONFIRM %q", g.confirm)
	}

	resp, err = http.Post(env.srv.URL+"/post", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "done" {
		t.Fatalf("POST: got %d %q", resp.StatusCode, b)
	}
	first, second := <-reqs, <-reqs
	for _, r := range []seen{first, second} {
		if r.path != "/post" || r.confirm != "ack" {
			t.Fatalf("request %+v, want /post with ZMQX_CONFIRM: ack", r)
		}
	}
	var got []string
	for len(got) < 2 {
		select {
		case m := <-ctl:
			// (The GET's ACK came after its reply: DISCONNECT for it.)
			if strings.HasSuffix(m, " "+first.connID) || strings.HasSuffix(m, " "+second.connID) {
				got = append(got, m)
			}
		case <-time.After(testDeadline):
			t.Fatalf("control messages %q; want a DISCONNECT and a CONFIRM", got)
		}
	}
	// In either order: DISCONNECT goes through the control queue.
	slices.Sort(got)
	want := []string{"CONFIRM " + second.connID, "DISCONNECT " + first.connID}
	if got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("control messages %q, want %q", got, want)
	}
	for len(ctl) > 0 {
		if m := <-ctl; strings.HasPrefix(m, "CONFIRM") {
			t.Errorf("a further %q (the GET's ACK, or the late one's)", m)
		}
	}
}
