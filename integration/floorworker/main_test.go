package main

import (
	"bufio"
	"bytes"
	"net/http"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
)

const sender = "front-end-uuid"

// frontEnd is a minimal Mongrel2 front end on real libzmq: a bound PUSH for
// requests and a bound SUB for replies, on ports picked by the system.
type frontEnd struct {
	push, sub *zmq.Socket
	req, rep  string
}

func newFrontEnd(t *testing.T, zctx *zmq.Context) *frontEnd {
	t.Helper()
	fe := &frontEnd{}
	var err error
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	fe.push, err = zctx.NewSocket(zmq.PUSH)
	must(err)
	fe.sub, err = zctx.NewSocket(zmq.SUB)
	must(err)
	for _, s := range []*zmq.Socket{fe.push, fe.sub} {
		must(s.SetLinger(0))
	}
	must(fe.sub.SetSubscribe(sender + " "))
	must(fe.sub.SetRcvtimeo(100 * time.Millisecond))
	must(fe.push.Bind("tcp://127.0.0.1:*"))
	must(fe.sub.Bind("tcp://127.0.0.1:*"))
	fe.req, err = fe.push.GetLastEndpoint()
	must(err)
	fe.rep, err = fe.sub.GetLastEndpoint()
	must(err)
	return fe
}

func (fe *frontEnd) close() { fe.push.Close(); fe.sub.Close() }

func request(connID, method string) []byte {
	var h mongrel2.HeaderEncoder
	h.Reset(mongrel2.FormatJSON)
	h.Add("host", "localhost")
	h.Add("METHOD", method)
	h.Add("PATH", "/")
	h.Add("VERSION", "HTTP/1.1")
	return mongrel2.AppendRequest(nil, sender, connID, "/", h.Bytes(), nil)
}

// reply waits, until deadline, for the next reply; ok false on timeout.
func (fe *frontEnd) reply(t *testing.T, deadline time.Time) (id, body []byte, ok bool) {
	t.Helper()
	for time.Now().Before(deadline) {
		msg, err := fe.sub.RecvBytes(0)
		if err != nil {
			continue // the receive timeout: poll again
		}
		s, ids, body, err := mongrel2.ParseReply(msg)
		if err != nil || string(s) != sender {
			t.Fatalf("bad reply %q: %v", msg, err)
		}
		return ids, body, true
	}
	return nil, nil, false
}

func TestFloorWorker(t *testing.T) {
	zctx, err := zmq.NewContext()
	if err != nil {
		t.Fatal(err)
	}
	fe := newFrontEnd(t, zctx)
	done := make(chan error, 1)
	go func() { done <- serve(zctx, fe.req, fe.rep, &answerer{}) }()
	defer func() {
		fe.close()
		_ = zctx.Term() // ends serve: its receive fails with ETERM
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()

	// PUB drops replies until the subscription has reached the worker:
	// send the first request until an answer comes back.
	deadline := time.Now().Add(20 * time.Second)
	var id, body []byte
	for ok := false; !ok; {
		if time.Now().After(deadline) {
			t.Fatal("no reply from the floor worker")
		}
		if _, err := fe.push.SendBytes(request("1", "GET"), 0); err != nil {
			t.Fatal(err)
		}
		id, body, ok = fe.reply(t, time.Now().Add(500*time.Millisecond))
	}
	if string(id) != "1" {
		t.Fatalf("reply for %q, want 1", id)
	}
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(body)), nil)
	if err != nil {
		t.Fatalf("reply is not an HTTP response: %v\n%q", err, body)
	}
	var got bytes.Buffer
	_, _ = got.ReadFrom(resp.Body)
	if resp.StatusCode != 200 || got.String() != helloBody ||
		resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" || resp.Header.Get("Date") == "" {
		t.Fatalf("reply %q", body)
	}
	// Drain the answers to the repeated first request.
	for {
		if _, _, ok := fe.reply(t, time.Now().Add(300*time.Millisecond)); !ok {
			break
		}
	}

	// A disconnect notice and a malformed frame get no answer; the request
	// after them does.
	for _, msg := range [][]byte{
		mongrel2.AppendDisconnect(nil, sender, "2"),
		[]byte("not a request"),
		request("3", "GET"),
	} {
		if _, err := fe.push.SendBytes(msg, 0); err != nil {
			t.Fatal(err)
		}
	}
	id, _, ok := fe.reply(t, time.Now().Add(20*time.Second))
	if !ok || string(id) != "3" {
		t.Fatalf("after a disconnect and a malformed frame: reply for %q (ok %v), want 3", id, ok)
	}
}

// wsRequest is a front end's WebSocket request: METHOD and, for messages,
// FLAGS, with body.
func wsRequest(method, flags, body string) *mongrel2.Request {
	var h mongrel2.HeaderEncoder
	h.Reset(mongrel2.FormatJSON)
	h.Add("upgrade", "websocket")
	h.Add("METHOD", method)
	if flags != "" {
		h.Add("FLAGS", flags)
	}
	r, err := mongrel2.ParseRequest(mongrel2.AppendRequest(nil, sender, "7", "/echo", h.Bytes(), []byte(body)))
	if err != nil {
		panic(err)
	}
	return r
}

func TestFloorWorkerWebSocket(t *testing.T) {
	reply := func(payload string) string {
		return string(mongrel2.AppendReplyOne(nil, sender, "7", []byte(payload)))
	}
	for _, tc := range []struct {
		name    string
		req     *mongrel2.Request
		want    string // "" = no reply
		wantEnd bool
	}{
		{"handshake", wsRequest("WEBSOCKET_HANDSHAKE", "", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
			reply("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"), false},
		{"text", wsRequest("WEBSOCKET", "0x81", "hi"), reply("\x81\x02hi"), false},
		{"binary", wsRequest("WEBSOCKET", "0x82", "\x00\x01"), reply("\x82\x02\x00\x01"), false},
		{"ping", wsRequest("WEBSOCKET", "0x89", "p"), reply("\x8a\x01p"), false},
		{"pong", wsRequest("WEBSOCKET", "0x8A", "p"), "", false},
		{"close", wsRequest("WEBSOCKET", "0x88", "\x03\xe8"), reply("\x88\x02\x03\xe8"), true},
		{"bad flags", wsRequest("WEBSOCKET", "text", "x"), "", false},
		{"hello after them", wsRequest("GET", "", ""), "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var a answerer
			// A handshake and a message first, so reused buffers are in play.
			a.answer(wsRequest("WEBSOCKET_HANDSHAKE", "", "key"))
			a.answer(wsRequest("WEBSOCKET", "0x81", "earlier message"))
			got, end := a.answer(tc.req)
			if tc.name == "hello after them" {
				if !bytes.Contains(got, []byte("\r\n\r\n"+helloBody)) {
					t.Fatalf("hello reply %q", got)
				}
				return
			}
			if string(got) != tc.want || end != tc.wantEnd {
				t.Fatalf("reply %q end %v, want %q end %v", got, end, tc.want, tc.wantEnd)
			}
		})
	}
}
