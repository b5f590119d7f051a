package caddyzmq

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

// freeLoopbackEndpoint is a tcp endpoint on a loopback port free now.
func freeLoopbackEndpoint(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return fmt.Sprintf("tcp://%s", l.Addr())
}

// TestWorkerRemoteAddr: a worker whose control connection comes over tcp
// loopback is listed with the address and port it comes from; over ipc,
// which has no port, with libzmq's Peer-Address, which ends with the peer's
// uid, gid and pid.
func TestWorkerRemoteAddr(t *testing.T) {
	for _, tc := range []struct {
		name string
		ep   func(t *testing.T) string
		ok   func(addr string) bool
	}{
		{"tcp loopback", freeLoopbackEndpoint, func(a string) bool {
			host, port, err := net.SplitHostPort(a)
			n, _ := strconv.Atoi(port)
			return err == nil && host == "127.0.0.1" && n > 0
		}},
		{"ipc", func(t *testing.T) string { return "ipc://" + t.TempDir() + "/ctl" },
			// "localhost:uid:gid:pid", the pid this test's (the worker's).
			func(a string) bool { return strings.HasSuffix(a, fmt.Sprintf(":%d", os.Getpid())) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctlEP := tc.ep(t)
			env := newTestEnv(t, func(h *Handler) {
				h.Pools = []Pool{{Name: "addr", RequestEndpoint: h.RequestEndpoint, ReplyEndpoint: h.ReplyEndpoint, ControlEndpoint: ctlEP}}
				h.RequestEndpoint, h.ReplyEndpoint = "", ""
			})
			dealerWorker(t, env, ctlEP, "wk-addr")
			pollUntil(t, "the worker to join", func() bool {
				ps := poolViews("addr")
				return len(ps) == 1 && len(ps[0].Workers) == 1
			})
			if w := workerOf(t, "addr", "wk-addr"); !tc.ok(w.RemoteAddr) {
				t.Fatalf("worker %+v: remote address %q", w, w.RemoteAddr)
			}
		})
	}
}
