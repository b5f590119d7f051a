package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
)

// fakeWorker answers every request on real libzmq sockets with a fixed
// response naming what it saw, until stop is closed.
func fakeWorker(t *testing.T, reqEP, repEP string, stop <-chan struct{}) <-chan struct{} {
	t.Helper()
	pull, err := zmq.NewSocket(zmq.PULL)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := zmq.NewSocket(zmq.PUB)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*zmq.Socket{pull, pub} {
		_ = s.SetLinger(0)
	}
	_ = pull.SetRcvtimeo(50 * time.Millisecond)
	if err := pull.Connect(reqEP); err != nil {
		t.Fatal(err)
	}
	if err := pub.Connect(repEP); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer pull.Close()
		defer pub.Close()
		for {
			select {
			case <-stop:
				return
			default:
			}
			msg, err := pull.RecvBytes(0)
			if err != nil {
				continue // the receive timeout: look at stop again
			}
			r, err := mongrel2.ParseRequest(msg)
			if err != nil {
				t.Errorf("bridge sent a malformed request %q: %v", msg, err)
				return
			}
			seen := strings.Join([]string{r.Header("METHOD"), r.Header("URI"), r.Header("PATH"),
				r.Header("QUERY"), r.Header("host"), r.Header("x-token"), string(r.Body)}, "|")
			body := "HTTP/1.1 201 Created\r\nX-Seen: " + seen + "\r\nContent-Length: 2\r\n\r\nok"
			// Every reply three times: the others must be dropped, not stall the
			// bridge's receiving goroutine.
			for range 3 {
				if _, err := pub.SendBytes(mongrel2.AppendReplyOne(nil, r.Sender, r.ConnID, []byte(body)), 0); err != nil {
					t.Errorf("reply: %v", err)
					return
				}
			}
		}
	}()
	return done
}

func TestBridge(t *testing.T) {
	dir := t.TempDir()
	reqEP, repEP := "ipc://"+filepath.Join(dir, "req"), "ipc://"+filepath.Join(dir, "rep")
	b, err := newBridge(reqEP, repEP)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := fakeWorker(t, reqEP, repEP, stop)
	defer func() { close(stop); <-done }()
	srv := httptest.NewServer(b)
	defer srv.Close()
	client := &http.Client{Timeout: 500 * time.Millisecond}

	// A PUB drops replies until its subscriber's subscription has reached
	// it: ask until an answer comes back.
	var resp *http.Response
	for deadline := time.Now().Add(20 * time.Second); ; {
		req, _ := http.NewRequest("POST", srv.URL+"/a/b?x=1", strings.NewReader("body"))
		req.Header.Set("X-Token", "t0k")
		if resp, err = client.Do(req); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no answer through the bridge: %v", err)
		}
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	if want := "POST|/a/b?x=1|/a/b|x=1|" + host + "|t0k|body"; resp.StatusCode != 201 || string(got) != "ok" || resp.Header.Get("X-Seen") != want {
		t.Fatalf("got %d %q X-Seen %q; want 201 \"ok\" X-Seen %q", resp.StatusCode, got, resp.Header.Get("X-Seen"), want)
	}
	// The duplicate replies left the bridge answering.
	client.Timeout = 20 * time.Second
	for i := range 5 {
		resp, err := client.Get(srv.URL + "/again")
		if err != nil {
			t.Fatalf("request %d after duplicate replies: %v", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != 201 {
			t.Fatalf("request %d after duplicate replies: status %d", i, resp.StatusCode)
		}
	}
}

func TestCopyHead(t *testing.T) {
	for _, tc := range []struct {
		name, reply string
		status      int
		header      string // X-A's value
		body        string
		wantErr     bool
	}{
		{"ok", "HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nbody", 200, "1", "body", false},
		{"no headers", "HTTP/1.1 404 Not Found\r\n\r\n", 404, "", "", false},
		{"no end of head", "HTTP/1.1 200 OK\r\nX-A: 1\r\n", 0, "", "", true},
		{"no status", "HTTP/1.1\r\n\r\n", 0, "", "", true},
		{"bad status", "HTTP/1.1 abc OK\r\n\r\n", 0, "", "", true},
		{"status out of range", "HTTP/1.1 99 Low\r\n\r\n", 0, "", "", true},
		{"header without colon", "HTTP/1.1 200 OK\r\nX-A 1\r\n\r\n", 0, "", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			status, body, err := copyHead(h, []byte(tc.reply))
			if (err != nil) != tc.wantErr || status != tc.status || h.Get("X-A") != tc.header || string(body) != tc.body {
				t.Fatalf("copyHead = %d %q %v, X-A %q; want %d %q, error %v, X-A %q",
					status, body, err, h.Get("X-A"), tc.status, tc.body, tc.wantErr, tc.header)
			}
		})
	}
}

// FuzzCopyHead: any reply is either refused or gives a status net/http
// takes (it panics on others), with every header line copied.
func FuzzCopyHead(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nbody"))
	f.Add([]byte("HTTP/1.1 200\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 -1 x\r\n\r\n"))
	f.Add([]byte("\r\n\r\n"))
	f.Fuzz(func(t *testing.T, reply []byte) {
		rec := httptest.NewRecorder()
		writeReply(rec, reply)
		if rec.Code < 100 || rec.Code > 999 {
			t.Fatalf("status %d for %q", rec.Code, reply)
		}
	})
}
