package caddyzmq

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	zmq "github.com/pebbe/zmq4"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
)

// TestStreamedUpload: with a zmqx worker, a large body goes over the
// control channel in BODY messages, never more than the window beyond the
// worker's grants, and arrives whole. A chunked body over max_request_body
// gets 413, and the worker sees BODYERR (its answer to it does not reach the
// client).
func TestStreamedUpload(t *testing.T) {
	ctlEP := "ipc://" + filepath.Join(t.TempDir(), "ctl")
	const window = 256 << 10
	env := newTestEnv(t, func(h *Handler) {
		h.ControlEndpoint = ctlEP
		h.ReplyWindow = window
		h.MaxRequestBody = 12 << 20
		h.ReplyTimeout = caddy.Duration(20 * time.Second)
	})
	overrun := make(chan int64, 1)
	bodyErr := make(chan string, 1)
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		pull, pub, dealer, closeAll, err := openZmqxWorker(env, ctlEP, "wk-upload")
		defer closeAll()
		if err != nil {
			t.Error(err)
			return
		}
		poller := zmq.NewPoller()
		poller.Add(pull, zmq.POLLIN)
		poller.Add(dealer, zmq.POLLIN)
		var cur *mongrel2.Request
		hash := sha256.New()
		var total, ungranted int64
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
				if p.Socket == pull {
					req, err := mongrel2.ParseRequest(msg)
					if err != nil || req.IsDisconnect() {
						continue
					}
					if req.Header("ZMQX_BODY") != "stream" {
						pub.SendBytes(mongrel2.AppendReplyOne(nil, req.Sender, req.ConnID, okReply("inline")[0]), 0)
						continue
					}
					cur, total, ungranted = req, 0, 0
					hash.Reset()
					dealer.SendBytes([]byte("ACK "+req.ConnID), 0)
					continue
				}
				verb, rest, _ := bytes.Cut(msg, []byte{' '})
				_, data, _ := bytes.Cut(rest, []byte{' '})
				switch string(verb) {
				case "BODY":
					hash.Write(data)
					total += int64(len(data))
					ungranted += int64(len(data))
					if ungranted > window {
						select {
						case overrun <- ungranted:
						default:
						}
					}
					// Grant only in big steps, like a slow reader.
					if ungranted >= window {
						dealer.SendBytes([]byte(fmt.Sprintf("UCREDIT %s %d", cur.ConnID, ungranted)), 0)
						ungranted = 0
					}
				case "BODYERR":
					bodyErr <- cur.ConnID
					reply := "HTTP/1.1 400 Bad Request\r\nContent-Length: 8\r\n\r\nbody err"
					pub.SendBytes(mongrel2.AppendReplyOne(nil, cur.Sender, cur.ConnID, []byte(reply)), 0)
				case "BODYEND":
					reply := hex.EncodeToString(hash.Sum(nil)) + " " + strconv.FormatInt(total, 10)
					pub.SendBytes(mongrel2.AppendReplyOne(nil, cur.Sender, cur.ConnID, okReply(reply)[0]), 0)
				}
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	env.waitForWorker(t)
	for deadline := time.Now().Add(testDeadline); !env.h.pools[0].transport.control.coversPeers(); {
		if time.Now().After(deadline) {
			t.Fatal("worker never counted as zmqx")
		}
		time.Sleep(5 * time.Millisecond) // polling
	}
	for _, chunked := range []bool{false, true} {
		payload := bytes.Repeat([]byte("streamed upload "), 512<<10) // 8 MiB
		var body io.Reader = bytes.NewReader(payload)
		if chunked {
			body = io.MultiReader(body)
		}
		resp, err := http.Post(env.srv.URL+"/upload", "application/octet-stream", body)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		sum := sha256.Sum256(payload)
		want := hex.EncodeToString(sum[:]) + " " + strconv.Itoa(len(payload))
		if string(b) != want {
			t.Fatalf("chunked=%v: worker got %q, want %q", chunked, b, want)
		}
	}
	// Over the limit, found only while streaming (no Content-Length): the
	// body ends just past it, so the client has sent it all when the 413
	// comes.
	over := io.MultiReader(bytes.NewReader(make([]byte, 12<<20+100<<10)))
	resp, err := http.Post(env.srv.URL+"/upload", "application/octet-stream", over)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("a chunked body over max_request_body: %d %q, want 413", resp.StatusCode, b)
	}
	select {
	case <-bodyErr:
	case <-time.After(testDeadline):
		t.Fatal("the worker never got BODYERR for the body over the limit")
	}
	select {
	case n := <-overrun:
		t.Fatalf("Caddy sent %d bytes beyond the worker's grants (window %d)", n, window)
	default:
	}
}
