package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"runtime"
	"syscall"
	"testing"
)

func ask(t *testing.T, h http.Handler, path string) answer {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	var a answer
	if err := json.Unmarshal(rec.Body.Bytes(), &a); err != nil {
		t.Fatalf("%v in %q", err, rec.Body.String())
	}
	return a
}

// The C counter is per thread: a goroutine locked to a new thread counts
// from one, and a second such thread has its own count.
func TestCountsPerThread(t *testing.T) {
	h := handler("wk-test")
	for range 2 {
		done := make(chan struct{})
		go func() {
			defer close(done)
			// Never unlocked: the thread ends with the goroutine, so the
			// next round gets a new one.
			runtime.LockOSThread()
			for i := int64(1); i <= 3; i++ {
				a := ask(t, h, "/")
				if a.Count != i || a.TID != syscall.Gettid() || a.Worker != "wk-test" || a.Pinned || a.Broadcast {
					t.Errorf("request %d: %+v (tid %d)", i, a, syscall.Gettid())
				}
			}
		}()
		<-done
	}
}

func TestPanicPath(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("/panic did not panic")
		}
	}()
	ask(t, handler("wk-test"), "/panic")
}
