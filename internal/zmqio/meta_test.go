package zmqio

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"
)

// sockPair returns a PUSH (tx) connected to a PULL (rx) bound to bind and read
// by a UserReceiver, closed when the test ends. When source is set, tx
// connects from it (libzmq's "tcp://source;destination").
func sockPair(t *testing.T, bind, source string) (*zmq.Socket, *UserReceiver) {
	t.Helper()
	ctx, err := zmq.NewContext()
	if err != nil {
		t.Fatal(err)
	}
	rx, err := ctx.NewSocket(zmq.PULL)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := ctx.NewSocket(zmq.PUSH)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = tx.Close()
		_ = rx.Close()
		_ = ctx.Term()
	})
	for _, s := range []*zmq.Socket{rx, tx} {
		if err := s.SetLinger(0); err != nil {
			t.Fatal(err)
		}
		if err := s.SetIpv6(true); err != nil {
			t.Fatal(err)
		}
	}
	if err := rx.Bind(bind); err != nil {
		t.Fatal(err)
	}
	ep, err := rx.GetLastEndpoint()
	if err != nil {
		t.Fatal(err)
	}
	if source != "" {
		ep = "tcp://" + source + ";" + strings.TrimPrefix(ep, "tcp://")
	}
	if err := tx.Connect(ep); err != nil {
		t.Fatalf("connect %s: %v", ep, err)
	}
	u, err := NewUserReceiver(rx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(u.Close)
	return tx, u
}

// tcpPair is sockPair over tcp loopback.
func tcpPair(t *testing.T) (*zmq.Socket, *UserReceiver) {
	return sockPair(t, "tcp://127.0.0.1:*", "")
}

// freePort is a tcp port free on host at the time of the call.
func freePort(t *testing.T, host string) string {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Skipf("no %s: %v", host, err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port
}

func TestReadAddrOf(t *testing.T) {
	tx, u := tcpPair(t)
	if err := u.ReadAddrOf("HELLO"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	for _, tc := range []struct {
		msg      string
		wantAddr bool
	}{
		{"HELLO 4", true},
		{"HB", false},
		{"HELL", false}, // shorter than the prefix
		{"ACK HELLO", false},
		{"HELLO", true},
	} {
		if _, err := tx.Send(tc.msg, 0); err != nil {
			t.Fatal(err)
		}
		part, _, _, err := u.RecvIntoUser(buf, 0, "")
		if err != nil || string(part) != tc.msg {
			t.Fatalf("%q: got %q, %v", tc.msg, part, err)
		}
		addr := u.Addr()
		t.Logf("%q: address %q", tc.msg, addr)
		if got := addr != ""; got != tc.wantAddr {
			t.Fatalf("%q: address %q, want one: %v", tc.msg, addr, tc.wantAddr)
		}
		if !tc.wantAddr {
			continue
		}
		host, port, err := net.SplitHostPort(addr)
		if err != nil || host != "127.0.0.1" || port == "0" {
			t.Fatalf("%q: address %q, want 127.0.0.1:port", tc.msg, addr)
		}
	}
}

// TestAddrPort: the address of a tcp sender is its connection's own host
// and port, for IPv4 and IPv6: the sender binds its side to a known port.
func TestAddrPort(t *testing.T) {
	for _, tc := range []struct{ name, host, bind string }{
		{"ipv4", "127.0.0.1", "tcp://127.0.0.1:*"},
		{"ipv6", "::1", "tcp://[::1]:*"},
		// A dual-stack socket sees an IPv4 peer as ::ffff:a.b.c.d.
		{"ipv4 on ipv6", "127.0.0.1", "tcp://*:*"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port := freePort(t, tc.host)
			src := net.JoinHostPort(tc.host, port)
			if got := helloAddr(t, tc.bind, src); got != src {
				t.Fatalf("address %q, want the sender's %q", got, src)
			}
		})
	}
}

// helloAddr sends HELLO over a sockPair(bind, source) and returns the
// address its receiver reads for it.
func helloAddr(t *testing.T, bind, source string) string {
	t.Helper()
	tx, u := sockPair(t, bind, source)
	if err := u.ReadAddrOf("HELLO"); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Send("HELLO", 0); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := u.RecvIntoUser(make([]byte, 64), 0, ""); err != nil {
		t.Fatal(err)
	}
	return u.Addr()
}

// TestAddrIPC: over ipc there is no port; the address stays libzmq's,
// which ends with the sender's credentials (uid:gid:pid, the pid this
// test's).
func TestAddrIPC(t *testing.T) {
	addr := helloAddr(t, "ipc://"+filepath.Join(t.TempDir(), "s"), "")
	t.Logf("ipc address %q", addr)
	if !strings.HasSuffix(addr, fmt.Sprintf(":%d", os.Getpid())) {
		t.Fatalf("ipc address %q, want libzmq's, ending with this process's pid", addr)
	}
}

// TestRecvUserNoAlloc: with ReadAddrOf set, receiving parts that do not
// begin with its prefix allocates nothing (the hot path stays as it was).
func TestRecvUserNoAlloc(t *testing.T) {
	tx, u := tcpPair(t)
	if err := u.ReadAddrOf("HELLO"); err != nil {
		t.Fatal(err)
	}
	const runs = 100
	for range runs + 1 {
		if _, err := tx.Send("HB", 0); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 64)
	allocs := testing.AllocsPerRun(runs, func() {
		part, _, _, err := u.RecvIntoUser(buf, 0, "")
		if err != nil || string(part) != "HB" || u.Addr() != "" {
			t.Fatalf("got %q, %v, address %q", part, err, u.Addr())
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per receive", allocs)
	}
}

// TestAddrConnectionGone: a HELLO read after its connection closed (its
// descriptor closed, not reused) gives the host alone, not a stale port.
// A descriptor reused by a connection from the same host is not told
// apart (docs/observability.md says so) and is not tested.
func TestAddrConnectionGone(t *testing.T) {
	ctx, err := zmq.NewContext()
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.Term()
	rx, _ := ctx.NewSocket(zmq.PULL)
	defer rx.Close()
	_ = rx.SetLinger(0)
	mon, err := ctx.NewSocket(zmq.PAIR)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		// libzmq sends monitor events with a blocking send: stop
		// monitoring before the reader goes, or an event for a PAIR with
		// no reader blocks the I/O thread that emits it.
		_ = rx.Monitor("", 0)
		mon.Close()
	}()
	_ = mon.SetLinger(0)
	if err := rx.Monitor("inproc://gone-monitor", zmq.EVENT_ACCEPTED|zmq.EVENT_DISCONNECTED); err != nil {
		t.Fatal(err)
	}
	if err := mon.Connect("inproc://gone-monitor"); err != nil {
		t.Fatal(err)
	}
	if err := rx.Bind("tcp://127.0.0.1:*"); err != nil {
		t.Fatal(err)
	}
	ep, _ := rx.GetLastEndpoint()
	tx, _ := ctx.NewSocket(zmq.PUSH)
	_ = tx.SetLinger(5000)
	if err := tx.Connect(ep); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Send("HELLO", 0); err != nil {
		t.Fatal(err)
	}
	// Wait until HELLO is in rx's queue (polling also attaches the
	// connection's pipe to rx, which keeps it past the disconnect).
	poller := zmq.NewPoller()
	poller.Add(rx, zmq.POLLIN)
	if polled, err := poller.Poll(10 * time.Second); err != nil || len(polled) != 1 {
		t.Fatalf("HELLO not received: %v", err)
	}
	_ = tx.Close()
	_ = mon.SetRcvtimeo(10 * time.Second)
	fd := -1
	for _, want := range []zmq.Event{zmq.EVENT_ACCEPTED, zmq.EVENT_DISCONNECTED} {
		ev, _, value, err := mon.RecvEvent(0)
		if err != nil || ev != want {
			t.Fatalf("waiting for %v: %v %v", want, ev, err)
		}
		fd = value // the connection's descriptor
	}
	// libzmq reports the disconnect before it closes the descriptor.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := syscall.Getpeername(fd); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("descriptor %d still connected", fd)
		}
		time.Sleep(time.Millisecond) // polling with a deadline
	}
	u, err := NewUserReceiver(rx)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if err := u.ReadAddrOf("HELLO"); err != nil {
		t.Fatal(err)
	}
	_ = rx.SetRcvtimeo(10 * time.Second)
	if part, _, _, err := u.RecvIntoUser(make([]byte, 64), 0, ""); err != nil || string(part) != "HELLO" {
		t.Fatalf("got %q, %v", part, err)
	}
	if got := u.Addr(); got != "127.0.0.1" {
		t.Fatalf("address %q of a gone connection, want the host alone", got)
	}
}

func TestReadAddrOfOff(t *testing.T) {
	tx, u := tcpPair(t)
	if err := u.ReadAddrOf(strings.Repeat("x", 33)); err == nil {
		t.Fatal("a prefix longer than the receiver keeps was taken")
	}
	if _, err := tx.Send("HELLO 1", 0); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := u.RecvIntoUser(make([]byte, 64), 0, ""); err != nil {
		t.Fatal(err)
	}
	if a := u.Addr(); a != "" {
		t.Fatalf("address %q read without a prefix", a)
	}
}

// TestReadFD: with ReadFD on, each part names its connection's file
// descriptor, a socket whose peer is the sender; off, none.
func TestReadFD(t *testing.T) {
	tx, u := tcpPair(t)
	buf := make([]byte, 64)
	for _, on := range []bool{true, false, true} {
		u.ReadFD(on)
		if _, err := tx.Send("x", 0); err != nil {
			t.Fatal(err)
		}
		if _, _, _, err := u.RecvIntoUser(buf, 0, ""); err != nil {
			t.Fatal(err)
		}
		fd := u.FD()
		if !on {
			if fd != -1 {
				t.Fatalf("ReadFD off: fd %d, want -1", fd)
			}
			continue
		}
		if fd < 0 {
			t.Fatal("ReadFD on: no fd")
		}
		sa, err := syscall.Getpeername(fd)
		if err != nil {
			t.Fatalf("fd %d: %v", fd, err)
		}
		var ip net.IP
		switch a := sa.(type) {
		case *syscall.SockaddrInet4:
			ip = a.Addr[:]
		case *syscall.SockaddrInet6: // a dual-stack socket: ::ffff:127.0.0.1
			ip = a.Addr[:]
		}
		if !ip.Equal(net.IPv4(127, 0, 0, 1)) {
			t.Fatalf("fd %d's peer is %#v, want 127.0.0.1", fd, sa)
		}
	}
}
