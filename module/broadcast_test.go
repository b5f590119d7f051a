package caddyzmq

import (
	"bufio"
	"encoding/json"
	"errors"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	zmq "github.com/pebbe/zmq4"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

func TestUnmarshalBroadcast(t *testing.T) {
	tests := []struct {
		input   string
		want    *Broadcast
		wantErr bool
	}{
		{"zmq {\nbroadcast\n}", &Broadcast{}, false},
		{"zmq {\nbroadcast 5s\n}", &Broadcast{Timeout: caddy.Duration(5 * time.Second)}, false},
		{"zmq {\nbroadcast 5s 4096\n}", &Broadcast{Timeout: caddy.Duration(5 * time.Second), MaxAnswer: 4096}, false},
		{"zmq {\nbroadcast soon\n}", nil, true},
		{"zmq {\nbroadcast 0s\n}", nil, true},
		{"zmq {\nbroadcast 5s -1\n}", nil, true},
		{"zmq {\nbroadcast 5s 1 2\n}", nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.input, func(t *testing.T) {
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v, want error %v", err, tc.wantErr)
			}
			if err == nil && *h.Broadcast != *tc.want {
				t.Errorf("got %+v, want %+v", *h.Broadcast, *tc.want)
			}
		})
	}
}

func TestValidateBroadcast(t *testing.T) {
	tests := []struct {
		name string
		h    Handler
		ok   bool
	}{
		{"off", Handler{}, true},
		{"control endpoint", Handler{Broadcast: &Broadcast{}, ControlEndpoint: "tcp://127.0.0.1:1"}, true},
		{"a pool with control", Handler{Broadcast: &Broadcast{}, Pools: []Pool{{}, {ControlEndpoint: "tcp://127.0.0.1:1"}}}, true},
		{"no control channel", Handler{Broadcast: &Broadcast{}}, false},
		{"negative timeout", Handler{Broadcast: &Broadcast{Timeout: -1}, ControlEndpoint: "tcp://127.0.0.1:1"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.h.validateBroadcast(); (err == nil) != tc.ok {
				t.Errorf("err %v, want ok %v", err, tc.ok)
			}
		})
	}
}

func TestAnswerRecorderLimit(t *testing.T) {
	a := &answerRecorder{header: http.Header{}, limit: 4}
	if n, err := a.Write([]byte("abcd")); n != 4 || err != nil {
		t.Fatalf("write within the limit: %d %v", n, err)
	}
	if _, err := a.Write([]byte("e")); !errors.Is(err, errAnswerTooLarge) {
		t.Fatalf("write past the limit: %v", err)
	}
	if a.status != http.StatusOK || string(a.body) != "abcd" {
		t.Errorf("status %d body %q", a.status, a.body)
	}
}

// An unacknowledged broadcast request fails with the worker it was sent
// to; an ordinary unacknowledged request does not (it has its dispatch
// deadline), nor does a broadcast request sent to another worker.
func TestBroadcastFailsWithItsWorker(t *testing.T) {
	tr := &transport{pending: map[uint64]*exchange{}}
	sent := tr.register(0, true)
	sent.broadcastTo = "wk-a"
	other := tr.register(0, true)
	other.broadcastTo = "wk-b"
	plain := tr.register(0, true)
	plain.addressed = "wk-a"
	if n := tr.failWorker("wk-a", errWorkerLost); n != 1 {
		t.Errorf("failed %d requests, want 1", n)
	}
	for _, c := range []struct {
		name string
		ex   *exchange
		want error
	}{{"sent to the lost worker", sent, errWorkerLost}, {"sent to another", other, nil}, {"not a broadcast", plain, nil}} {
		if _, err := c.ex.take(nil); !errors.Is(err, c.want) && err != c.want {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
}

// startHBWorker runs a fake zmqx/1 worker that heartbeats and answers
// every request with its id and the broadcast marker's value, until the
// test ends; a mute one acknowledges requests and answers none (hung).
func startHBWorker(t *testing.T, env *testEnv, ctlEP, id string, mute bool) {
	t.Helper()
	stop, done, ready := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	go func() {
		defer close(done)
		pull, pub, dealer, closeAll, err := openZmqxWorker(env, ctlEP, id)
		defer closeAll()
		if err != nil {
			ready <- err
			return
		}
		dealer.SendBytes([]byte("HELLO 4"), 0)
		ready <- nil
		poller := zmq.NewPoller()
		poller.Add(pull, zmq.POLLIN)
		poller.Add(dealer, zmq.POLLIN)
		hb := time.NewTicker(100 * time.Millisecond)
		defer hb.Stop()
		for {
			select {
			case <-stop:
				return
			case <-hb.C:
				dealer.SendBytes([]byte("HB"), 0)
			default:
			}
			polled, _ := poller.Poll(10 * time.Millisecond)
			for _, p := range polled {
				msg, err := p.Socket.RecvBytes(0)
				if err != nil {
					continue
				}
				if p.Socket == dealer {
					// Addressed requests come as "REQ <frame>"; other
					// control messages do not matter here.
					if !strings.HasPrefix(string(msg), "REQ ") {
						continue
					}
					msg = msg[4:]
				}
				req, err := mongrel2.ParseRequest(msg)
				if err != nil || req.IsDisconnect() {
					continue
				}
				dealer.SendBytes([]byte("ACK "+req.ConnID), 0)
				if mute {
					continue
				}
				body := id + " " + req.Header(zmqx.HeaderBroadcast)
				reply := "HTTP/1.1 200 OK\r\nContent-Length: " + itoa(len(body)) + "\r\n\r\n" + body
				pub.SendBytes(mongrel2.AppendReplyOne(nil, req.Sender, req.ConnID, []byte(reply)), 0)
			}
		}
	}()
	if err := <-ready; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { close(stop); <-done })
}

// TestBroadcastAsksEveryWorker: two fake workers, each addressed over the
// control channel (the requests socket is PUSH: a balanced request would
// reach one), each answering once, with the marker saying two were asked.
func TestBroadcastAsksEveryWorker(t *testing.T) {
	ctlEP := "ipc://" + filepath.Join(t.TempDir(), "ctl")
	env := newTestEnv(t, func(h *Handler) {
		h.ControlEndpoint = ctlEP
		// Short tries: a reply published before the worker's PUB saw
		// Caddy's subscription is lost (slow joiner).
		h.Broadcast = &Broadcast{Timeout: caddy.Duration(time.Second)}
	})
	startHBWorker(t, env, ctlEP, "wk-1", false)
	startHBWorker(t, env, ctlEP, "wk-2", false)
	deadline := time.Now().Add(testDeadline)
	for {
		resp, err := http.Get(env.srv.URL + "/all")
		if err != nil {
			t.Fatal(err)
		}
		var lines []map[string]any
		sc := bufio.NewScanner(resp.Body)
		for resp.StatusCode == http.StatusOK && sc.Scan() {
			var l map[string]any
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				t.Fatalf("%v: %q", err, sc.Text())
			}
			lines = append(lines, l)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK && len(lines) == 3 && lines[0]["type"] == "answer" && lines[1]["type"] == "answer" {
			bodies := map[string]bool{}
			for _, l := range lines[:2] {
				if l["status"] != float64(200) {
					t.Fatalf("line %v", l)
				}
				bodies[l["body"].(string)] = true
			}
			if !bodies["wk-1 2"] || !bodies["wk-2 2"] {
				t.Errorf("answers %v, want wk-1 and wk-2, each told 2 were asked", bodies)
			}
			if s := lines[2]; s["type"] != "summary" || s["asked"] != float64(2) || s["answered"] != float64(2) || s["failed"] != float64(0) {
				t.Errorf("summary %v", s)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no broadcast reached both workers: status %d, lines %v", resp.StatusCode, lines)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// getBroadcast sends GET url and returns the lines of a 200 (nil for
// another status).
func getBroadcast(t *testing.T, url string) []map[string]any {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil
	}
	var lines []map[string]any
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var l map[string]any
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("%v: %q", err, sc.Text())
		}
		lines = append(lines, l)
	}
	return lines
}

// TestBroadcastReportsHungWorker: a worker that heartbeats but answers
// nothing is found hung (hung_timeout) and reported failed then, not timed
// out at the broadcast's timeout; the other worker's answer is there.
func TestBroadcastReportsHungWorker(t *testing.T) {
	ctlEP := "ipc://" + filepath.Join(t.TempDir(), "ctl")
	// A short timeout: a try whose answer is lost to the slow joiner
	// costs that much.
	const hungAfter, timeout = 300 * time.Millisecond, 5 * time.Second
	env := newTestEnv(t, func(h *Handler) {
		h.ControlEndpoint = ctlEP
		h.HungTimeout = caddy.Duration(hungAfter)
		h.Broadcast = &Broadcast{Timeout: caddy.Duration(timeout)}
	})
	startHBWorker(t, env, ctlEP, "wk-ok", false)
	startHBWorker(t, env, ctlEP, "wk-hung", true)
	deadline := time.Now().Add(testDeadline)
	for {
		start := time.Now()
		lines := getBroadcast(t, env.srv.URL+"/all")
		took := time.Since(start)
		byWorker := map[string]map[string]any{}
		for _, l := range lines {
			if w, ok := l["worker"].(string); ok {
				byWorker[w] = l
			}
		}
		// Until both have joined, and wk-ok's subscription is in (slow
		// joiner), a try may see one worker, or wk-ok time out.
		if len(lines) == 3 && byWorker["wk-ok"]["type"] == "answer" {
			hung := byWorker["wk-hung"]
			if hung["type"] != "failed" || !strings.Contains(hung["error"].(string), "hung") {
				t.Errorf("the hung worker's line: %v", hung)
			}
			if s := lines[2]; s["type"] != "summary" || s["asked"] != float64(2) || s["answered"] != float64(1) || s["failed"] != float64(1) {
				t.Errorf("summary %v", s)
			}
			// "failed" (not "timed_out") is the proof that it was reported
			// when found hung, before the timeout.
			t.Logf("the broadcast took %v (hung_timeout %v, timeout %v)", took, hungAfter, timeout)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no broadcast with an answer from wk-ok and a line for wk-hung: %v", lines)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
