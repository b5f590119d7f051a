package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"
)

// writeCounter records the size of every Write.
type writeCounter struct {
	*httptest.ResponseRecorder
	sizes []int
}

func (w *writeCounter) Write(p []byte) (int, error) {
	w.sizes = append(w.sizes, len(p))
	return w.ResponseRecorder.Write(p)
}

func TestBig(t *testing.T) {
	for _, n := range []int{0, 1, len(bigPattern) + 3, 64 << 10, 200_000} {
		w := &writeCounter{ResponseRecorder: httptest.NewRecorder()}
		big(w, httptest.NewRequest("GET", "/big?bytes="+strconv.Itoa(n), nil))
		want := bytes.Repeat([]byte(bigPattern), n/len(bigPattern)+1)[:n]
		if !bytes.Equal(w.Body.Bytes(), want) {
			t.Errorf("bytes=%d: body of %d bytes differs from the pattern", n, w.Body.Len())
		}
		if got := w.Header().Get("Content-Length"); got != strconv.Itoa(n) {
			t.Errorf("bytes=%d: Content-Length %q", n, got)
		}
		for _, s := range w.sizes {
			if s > 64<<10 {
				t.Errorf("bytes=%d: a write of %d bytes", n, s)
			}
		}
	}
	w := httptest.NewRecorder()
	big(w, httptest.NewRequest("GET", "/big?bytes=-1", nil))
	if w.Code != http.StatusBadRequest {
		t.Errorf("bytes=-1: status %d", w.Code)
	}
}

func TestUpload(t *testing.T) {
	body := bytes.Repeat([]byte("upload me "), 100_000)
	w := httptest.NewRecorder()
	upload(w, httptest.NewRequest("POST", "/upload", bytes.NewReader(body)))
	var got struct {
		Bytes  int64  `json:"bytes"`
		SHA256 string `json:"sha256"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil {
		t.Fatalf("%v: %s", err, w.Body)
	}
	sum := sha256.Sum256(body)
	if got.Bytes != int64(len(body)) || got.SHA256 != hex.EncodeToString(sum[:]) {
		t.Errorf("got %+v, want %d bytes, %x", got, len(body), sum)
	}
}

func TestWaitReturnsOnCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		wait(httptest.NewRecorder(), httptest.NewRequest("GET", "/wait?id=1", nil).WithContext(ctx))
	}()
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("wait did not return after its context was cancelled")
	}
}
