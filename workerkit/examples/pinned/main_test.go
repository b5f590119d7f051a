package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"

	zmq "github.com/pebbe/zmq4"

	"github.com/zmqbridge/caddy-zmq/internal/zcert"
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

// TestCurveFlags: like the other example workers, pinned takes the front
// end's public key and its own keypair file, and rejects one without the
// other.
func TestCurveFlags(t *testing.T) {
	serverPub, _, err := zmq.NewCurveKeypair()
	if err != nil {
		t.Fatal(err)
	}
	workerPub, workerSec, err := zmq.NewCurveKeypair()
	if err != nil {
		t.Fatal(err)
	}
	server, worker := struct{ Public string }{serverPub}, struct{ Public, Secret string }{workerPub, workerSec}
	keyFile := filepath.Join(t.TempDir(), "w.key_secret")
	if err := os.WriteFile(keyFile, zcert.Format(worker.Public, worker.Secret), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := parseFlags([]string{"-id", "wk-1", "-curve-server-key", server.Public, "-curve-key", keyFile})
	if err != nil {
		t.Fatal(err)
	}
	fe := o.frontEnds[0]
	if fe.ServerKey != server.Public || fe.PublicKey != worker.Public || fe.SecretKey != worker.Secret {
		t.Fatalf("front end keys %q %q, want server %q and the worker's keypair", fe.ServerKey, fe.PublicKey, server.Public)
	}
	if _, err := parseFlags([]string{"-curve-server-key", server.Public}); err == nil {
		t.Fatal("-curve-server-key without -curve-key was accepted")
	}
}
