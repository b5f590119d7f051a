package main

import (
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestParseWorkerEnv(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
		ok   bool
	}{
		{"", nil, true},
		{"GOMAXPROCS=1", []string{"GOMAXPROCS=1"}, true},
		{"GOMAXPROCS=1, GODEBUG=schedtrace=2147483647", []string{"GOMAXPROCS=1", "GODEBUG=schedtrace=2147483647"}, true},
		{"EMPTY=", []string{"EMPTY="}, true},
		{"GOMAXPROCS", nil, false},
		{"=1", nil, false},
		{"A=1,,B=2", nil, false},
	} {
		got, err := parseWorkerEnv(tc.in)
		if (err == nil) != tc.ok || strings.Join(got, "|") != strings.Join(tc.want, "|") {
			t.Errorf("parseWorkerEnv(%q) = %q, %v; want %q, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

// -worker-env reaches the workers' environment, not the front ends'.
func TestStackWorkerEnv(t *testing.T) {
	s, err := newStack([]string{"BENCH_TEST_SETTING=on"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	printed := map[string]*Proc{}
	for _, name := range []string{"hello-worker (zmq)", "caddy", "mongrel2"} {
		p, err := s.Start(name, exec.Command("sh", "-c", `echo "setting=[$BENCH_TEST_SETTING]"`))
		if err != nil {
			t.Fatal(err)
		}
		printed[name] = p
	}
	for name, want := range map[string]string{"hello-worker (zmq)": "setting=[on]", "caddy": "setting=[]", "mongrel2": "setting=[]"} {
		p := printed[name]
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s did not exit", name)
		}
		if got := strings.TrimSpace(p.Output()); got != want {
			t.Errorf("%s printed %q, want %q", name, got, want)
		}
	}
}
