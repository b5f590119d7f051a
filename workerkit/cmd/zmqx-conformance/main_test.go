package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"

	"github.com/zmqbridge/caddy-zmq/workerkit"
)

// workerEnv makes the test binary a worker, serving the front end given as
// its last argument: the command under test starts it so.
const workerEnv = "CONFORMANCE_CMD_TEST_WORKER"

func TestMain(m *testing.M) {
	if os.Getenv(workerEnv) == "1" {
		os.Exit(serveWorker(os.Args[len(os.Args)-1]))
	}
	os.Exit(m.Run())
}

func serveWorker(spec string) int {
	fe, err := workerkit.ParseFrontEnd(spec)
	if err != nil {
		return 3
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "Hello, world!\n") })
	w := &workerkit.Worker{FrontEnds: []workerkit.FrontEnd{fe}, Handler: h, MaxConcurrent: 2}
	if err := w.Serve(ctx); err != nil {
		return 1
	}
	return 0
}

func TestRun(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		args     []string
		frontEnd string // the worker's, with the command's placeholders
		wantCode int
		wantOut  []string
	}{
		{"unknown case", []string{"-cases", "no/such-case"}, "", 2, nil},
		{"bad flag", []string{"-no-such-flag"}, "", 2, nil},
		{"workerkit passes", []string{"-cases", "mongrel2/round-trip,zmqx/hello,zmqx/bye", "--", self},
			"{requests},{replies},{control}", 0, []string{"zmqx/bye", "PASS", "3 passed, 0 failed"}},
		{"without control channel", []string{"-cases", "mongrel2/round-trip,zmqx/ack", "-control-wait", "300ms", "--", self},
			"{requests},{replies}", 0, []string{"NO CONTROL CHANNEL", "1 passed, 0 failed"}},
		{"a failing case fails the run", []string{"-cases", "mongrel2/round-trip", "-timeout", "2s", "--", self},
			"tcp://127.0.0.1:1,tcp://127.0.0.1:2", 1, []string{"FAIL"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if tt.frontEnd != "" {
				t.Setenv(workerEnv, "1")
				args = append(append([]string{}, args...), tt.frontEnd)
			}
			var out, errOut bytes.Buffer
			code := run(args, &out, &errOut)
			if code != tt.wantCode {
				t.Fatalf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.wantCode, out.String(), errOut.String())
			}
			for _, w := range tt.wantOut {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
}
