package zmqio

import (
	"strings"
	"syscall"
	"testing"

	zmq "github.com/pebbe/zmq4"
)

// tcpPair returns a PUSH (tx) connected over tcp loopback to a PULL (rx)
// read by a UserReceiver, closed when the test ends.
func tcpPair(t *testing.T) (*zmq.Socket, *UserReceiver) {
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
	}
	if err := rx.Bind("tcp://127.0.0.1:*"); err != nil {
		t.Fatal(err)
	}
	ep, err := rx.GetLastEndpoint()
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Connect(ep); err != nil {
		t.Fatal(err)
	}
	u, err := NewUserReceiver(rx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(u.Close)
	return tx, u
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
		t.Logf("%q: Peer-Address %q", tc.msg, addr)
		if got := addr != ""; got != tc.wantAddr {
			t.Fatalf("%q: address %q, want one: %v", tc.msg, addr, tc.wantAddr)
		}
		// libzmq gives the host, without the port.
		if tc.wantAddr && addr != "127.0.0.1" {
			t.Fatalf("%q: address %q, want 127.0.0.1", tc.msg, addr)
		}
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
		if in4, ok := sa.(*syscall.SockaddrInet4); !ok || in4.Addr != [4]byte{127, 0, 0, 1} {
			t.Fatalf("fd %d's peer is %#v, want 127.0.0.1", fd, sa)
		}
	}
}
