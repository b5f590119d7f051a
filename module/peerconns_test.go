package caddyzmq

import (
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"
)

// TestConnTrackerList: a connection's entry comes with its accept and goes with
// its disconnect; a descriptor that is no connection (closed since) has no
// address; events of other kinds change nothing.
func TestConnTrackerList(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dial, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer dial.Close()
	f, err := dial.(*net.TCPConn).File() // a descriptor of that connection
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	notSock, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer notSock.Close()

	var c connTracker
	now := time.Now()
	steps := []struct {
		ev    zmq.Event
		fd    int
		addrs []string // RemoteAddr of every entry after the event
	}{
		{zmq.EVENT_ACCEPTED, int(f.Fd()), []string{l.Addr().String()}},
		{zmq.EVENT_HANDSHAKE_SUCCEEDED, int(f.Fd()), []string{l.Addr().String()}},
		{zmq.EVENT_CONNECTED, int(notSock.Fd()), []string{"", l.Addr().String()}},
		{zmq.EVENT_DISCONNECTED, int(f.Fd()), []string{""}},
		{zmq.EVENT_DISCONNECTED, int(notSock.Fd()), []string{}},
		{zmq.EVENT_DISCONNECTED, 12345, []string{}},
	}
	for i, s := range steps {
		c.event(s.ev, s.fd, now.Add(time.Duration(i)*time.Second))
		var got []string
		for _, v := range c.list() {
			got = append(got, v.RemoteAddr)
		}
		slices.Sort(got)
		if !slices.Equal(got, s.addrs) && !(len(got) == 0 && len(s.addrs) == 0) {
			t.Fatalf("step %d (%v fd %d): addresses %q, want %q", i, s.ev, s.fd, got, s.addrs)
		}
	}
}

// TestRequestPeers: a plain handler connecting from a known port is listed
// in /zmq/pools' request_peers with that ip:port, and gone once it leaves.
func TestRequestPeers(t *testing.T) {
	reqEP := freeLoopbackEndpoint(t)
	env := newTestEnv(t, func(h *Handler) {
		h.Pools = []Pool{{Name: "peers", RequestEndpoint: reqEP, ReplyEndpoint: h.ReplyEndpoint}}
		h.RequestEndpoint, h.ReplyEndpoint = "", ""
	})
	_ = env
	src := strings.TrimPrefix(freeLoopbackEndpoint(t), "tcp://")
	ctx, err := zmq.NewContext()
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.Term()
	pull, err := ctx.NewSocket(zmq.PULL)
	if err != nil {
		t.Fatal(err)
	}
	_ = pull.SetLinger(0)
	if err := pull.Connect("tcp://" + src + ";" + strings.TrimPrefix(reqEP, "tcp://")); err != nil {
		t.Fatal(err)
	}
	listed := func() []string {
		var addrs []string
		for _, v := range poolViews("peers") {
			for _, p := range v.RequestPeers {
				addrs = append(addrs, p.RemoteAddr)
			}
		}
		return addrs
	}
	pollUntil(t, "the handler listed with its address", func() bool { return slices.Equal(listed(), []string{src}) })
	if err := pull.Close(); err != nil {
		t.Fatal(err)
	}
	pollUntil(t, "the handler gone from the list", func() bool { return len(listed()) == 0 })
}
