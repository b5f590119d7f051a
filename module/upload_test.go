package caddyzmq

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
)

// TestTempFileUpload: a body over upload_threshold reaches the handler as
// Mongrel2 delivers it: a start message, then a done message naming the
// same file, which holds the whole body; the file is gone afterwards.
func TestTempFileUpload(t *testing.T) {
	store := filepath.Join(t.TempDir(), "upload.XXXXXX")
	env := newTestEnv(t, func(h *Handler) {
		h.UploadTempStore = store
		h.UploadThreshold = 1024
	})
	type seen struct {
		start, done, length string
		content             []byte
	}
	got := make(chan seen, 4)
	startFakeWorker(t, env.reqEP, env.repEP, func(r *mongrel2.Request) [][]byte {
		if r.IsDisconnect() {
			return nil
		}
		s := seen{start: r.Header("x-mongrel2-upload-start"), done: r.Header("x-mongrel2-upload-done"), length: r.Header("content-length")}
		if s.start == "" {
			return okReply("inline " + string(r.Body))
		}
		if s.done == "" {
			got <- s
			return nil // keep waiting for the done message
		}
		s.content, _ = os.ReadFile(s.done)
		got <- s
		return okReply("stored")
	})
	env.waitForWorker(t)

	for _, chunked := range []bool{false, true} {
		payload := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
		var body io.Reader = bytes.NewReader(payload)
		if chunked {
			body = io.MultiReader(body)
		}
		req, _ := http.NewRequest("POST", env.srv.URL+"/up", body)
		// A client must not be able to point the handler at a file.
		req.Header.Set("X-Mongrel2-Upload-Done", "/etc/passwd")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "stored" {
			t.Fatalf("chunked=%v: reply %q", chunked, b)
		}
		start, done := <-got, <-got
		if start.done != "" || !strings.HasPrefix(start.start, filepath.Dir(store)) {
			t.Fatalf("start message: %+v", start)
		}
		if done.start != start.start || done.done != start.start {
			t.Fatalf("done message names %q/%q, start named %q", done.start, done.done, start.start)
		}
		if !bytes.Equal(done.content, payload) || done.length != "1048576" {
			t.Fatalf("file holds %d bytes (content-length %s), want %d", len(done.content), done.length, len(payload))
		}
		// The file goes when the handler returns, which may be just after
		// the client has the whole reply.
		for deadline := time.Now().Add(testDeadline); ; time.Sleep(5 * time.Millisecond) {
			if _, err := os.Stat(done.done); os.IsNotExist(err) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("upload file left behind")
			}
		}
	}
	// Small bodies stay inline.
	resp, err := http.Post(env.srv.URL+"/small", "text/plain", strings.NewReader("tiny"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "inline tiny" {
		t.Fatalf("small body: %q", b)
	}
}
