package conformance

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/zmqbridge/caddy-zmq/workerkit"
)

// testHandler is the application the kit's cases expect: / answers, /big is
// large, /upload reads its whole body first.
func testHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "Hello, world!\n")
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		chunk := strings.Repeat("0123456789abcdef", 4096) // 64 KiB
		for range 8 {
			if _, err := io.WriteString(w, chunk); err != nil {
				return
			}
		}
	})
	mux.HandleFunc("/upload", func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		_, _ = io.WriteString(w, strconv.FormatInt(n, 10))
	})
	return mux
}

// startWorkerkit runs a workerkit worker on ep (control channel too, unless
// plain) and returns its stop function.
func startWorkerkit(t testing.TB, ep Endpoints, plain bool) func() {
	fe := workerkit.FrontEnd{Requests: ep.Requests, Replies: ep.Replies, Control: ep.Control}
	if plain {
		fe.Control = ""
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &workerkit.Worker{FrontEnds: []workerkit.FrontEnd{fe}, Handler: testHandler(), MaxConcurrent: 4, ID: "wk-conformance"}
	done := make(chan error, 1)
	go func() { done <- w.Serve(ctx) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker: %v", err)
		}
	}
}

func TestWorkerkitConforms(t *testing.T) {
	rep := Test(t, Config{BigPath: "/big", UploadPath: "/upload"},
		func(ep Endpoints) func() { return startWorkerkit(t, ep, false) })
	for _, r := range rep.Results {
		if r.Status != Pass {
			t.Errorf("%s: %s %s (every case must pass for workerkit)", r.Case, r.Status, r.Detail)
		}
	}
}

// A worker without control channel passes the Mongrel2 cases, and the
// others report it instead of failing.
func TestPlainWorkerHasNoControl(t *testing.T) {
	rep := Test(t, Config{ControlWait: 300e6},
		func(ep Endpoints) func() { return startWorkerkit(t, ep, true) })
	for _, r := range rep.Results {
		want := NoControl
		if strings.HasPrefix(r.Case, "mongrel2/") {
			want = Pass
		}
		if r.Status != want {
			t.Errorf("%s: %s %s, want %s", r.Case, r.Status, r.Detail, want)
		}
	}
}
