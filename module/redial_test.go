package caddyzmq

import (
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	zmq "github.com/pebbe/zmq4"
	"go.uber.org/zap"

	"github.com/zmqbridge/caddy-zmq/internal/cutrelay"
	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

// freeTCPEndpoint returns a tcp endpoint on a loopback port free a moment
// ago.
func freeTCPEndpoint(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return "tcp://" + ln.Addr().String()
}

// TestHelloWelcomed: the front end answers every HELLO with WELCOME on the
// connection that carried it, before anything else it has for the worker
// (here the PAUSE a paused worker is told again after its HELLO).
func TestHelloWelcomed(t *testing.T) {
	ctlEP := "ipc://" + filepath.Join(t.TempDir(), "ctl")
	env := newTestEnv(t, func(h *Handler) { h.ControlEndpoint = ctlEP })
	tr := env.h.pools[0].transport
	dial := func() *zmq.Socket {
		d, err := zmq.NewSocket(zmq.DEALER)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		if err := firstErr(d.SetLinger(0), d.SetIdentity("wk-1"), d.SetRcvtimeo(testDeadline), d.Connect(ctlEP)); err != nil {
			t.Fatal(err)
		}
		if _, err := d.SendBytes(zmqx.AppendHello(nil, 4), 0); err != nil {
			t.Fatal(err)
		}
		return d
	}
	recv := func(d *zmq.Socket) string {
		t.Helper()
		msg, err := d.Recv(0)
		if err != nil {
			t.Fatalf("no message from the front end: %v", err)
		}
		return msg
	}
	d := dial()
	if got := recv(d); got != "WELCOME" {
		t.Fatalf("first message after HELLO: %q, want WELCOME", got)
	}
	d.Close()
	tr.control.mu.Lock()
	tr.control.workers["wk-1"].paused = true
	tr.control.mu.Unlock()
	d = dial()
	if got := []string{recv(d), recv(d)}; got[0] != "WELCOME" || got[1] != "PAUSE" {
		t.Fatalf("after HELLO on a new connection of a paused worker: %q, want WELCOME then PAUSE", got)
	}
}

// greeter plays a worker's control connection as workerkit runs it: HELLO
// after every handshake; the connection counts as up once WELCOME came.
type greeter struct {
	t      *testing.T
	d, mon *zmq.Socket
}

func newGreeter(t *testing.T, ep, id, server string, kp keyPair) *greeter {
	t.Helper()
	d, err := zmq.NewSocket(zmq.DEALER)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if err := firstErr(d.SetLinger(0), d.SetIdentity(id), curveClient(d, server, kp)); err != nil {
		t.Fatal(err)
	}
	monEP := fmt.Sprintf("inproc://greeter-%d", testMonitorSeq.Add(1))
	if err := d.Monitor(monEP, zmq.EVENT_HANDSHAKE_SUCCEEDED|zmq.EVENT_DISCONNECTED); err != nil {
		t.Fatal(err)
	}
	mon, err := zmq.NewSocket(zmq.PAIR)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.Monitor("", 0) // before the reader goes: see the handshake helper in curve_test.go
		mon.Close()
	})
	if err := firstErr(mon.Connect(monEP), d.Connect(ep)); err != nil {
		t.Fatal(err)
	}
	return &greeter{t: t, d: d, mon: mon}
}

// awaitWelcome says HELLO on each new connection until one is welcomed;
// it fails the test after deadline.
func (g *greeter) awaitWelcome(deadline time.Time) {
	g.t.Helper()
	poller := zmq.NewPoller()
	poller.Add(g.mon, zmq.POLLIN)
	poller.Add(g.d, zmq.POLLIN)
	for time.Now().Before(deadline) {
		polled, err := poller.Poll(time.Until(deadline))
		if err != nil && !errors.Is(err, zmq.Errno(4)) {
			g.t.Fatal(err)
		}
		for _, p := range polled {
			switch p.Socket {
			case g.mon:
				ev, _, _, err := g.mon.RecvEvent(zmq.DONTWAIT)
				if err == nil && ev == zmq.EVENT_HANDSHAKE_SUCCEEDED {
					g.d.SendBytes(zmqx.AppendHello(nil, 4), zmq.DONTWAIT)
				}
			case g.d:
				msg, err := g.d.RecvBytes(zmq.DONTWAIT)
				if err == nil && string(msg) == "WELCOME" {
					return
				}
			}
		}
	}
	g.t.Fatal("no WELCOME on any connection")
}

// TestRedialWhileOldLingers: a CURVE worker whose control connection was
// cut on its side only dials again while the old connection lingers at the
// front end, which libzmq then does not read. The front end closes the old
// connection (and the unread new one) as soon as it sees the same key dial
// again, so the worker is welcomed back while it is still live: no refusal
// is counted and the worker is never declared lost. (ZMTP heartbeats are
// off: nothing else ends the old connection.)
func TestRedialWhileOldLingers(t *testing.T) {
	server, good := mustKeyPair(t), mustKeyPair(t)
	ctlEP := freeTCPEndpoint(t)
	env := newTestEnv(t, func(h *Handler) {
		h.ControlEndpoint = ctlEP
		h.Heartbeat = caddy.Duration(-1)
		h.Curve = &Curve{SecretKey: server.secret, Allow: []string{good.public}}
	})
	tr := env.h.pools[0].transport
	relay := cutrelay.Start(t, ctlEP[len("tcp://"):])
	g := newGreeter(t, relay.Endpoint(), "wk-1", server.public, good)
	g.awaitWelcome(time.Now().Add(testDeadline))
	// Heard: it beats until the cut.
	waitFor(t, "the worker's connection heard", func() bool {
		g.d.SendBytes(zmqx.AppendHeartbeat(nil), zmq.DONTWAIT)
		return len(tr.control.conns.find(func(pc *peerConn) bool { return pc.heard && pc.key == good.public })) == 1
	})
	refused := tr.auth.refused.Load()
	lost := tr.control.lostTotal.Load()
	relay.CutWorkerSide()
	cut := time.Now()
	g.awaitWelcome(time.Now().Add(testDeadline))
	back := time.Since(cut)
	if tr.control.redials.Load() == 0 {
		t.Fatal("the lingering connection was not closed as a redial")
	}
	if n := tr.auth.refused.Load() - refused; n != 0 {
		t.Fatalf("%d refusals counted for the worker's own redial", n)
	}
	if tr.control.lostTotal.Load() != lost || !tr.control.isLive("wk-1") {
		t.Fatal("the worker was declared lost while it redialled")
	}
	t.Logf("welcomed back %v after the cut", back.Round(time.Millisecond))
}

// TestFindRedials: which lingering connections count as redialled from,
// decided from the tracked connections and the control socket's approvals.
func TestFindRedials(t *testing.T) {
	now := time.Now()
	const keyA, keyB = "key-a", "key-b"
	old := peerConn{fd: 10, since: now.Add(-time.Minute), peer: "10.0.0.1:4000", heard: true, key: keyA, worker: "wk-1",
		last: now.Add(-400 * time.Millisecond)}
	fresh := peerConn{fd: 11, since: now.Add(-300 * time.Millisecond), peer: "10.0.0.1:4001"}
	tests := []struct {
		name      string
		conns     []peerConn
		approvals []approval
		want      bool
	}{
		{"same key dialled again", []peerConn{old, fresh},
			[]approval{{"10.0.0.1", keyA, now.Add(-250 * time.Millisecond)}}, true},
		{"another key dialled (an impostor: refused as before)", []peerConn{old, fresh},
			[]approval{{"10.0.0.1", keyB, now.Add(-250 * time.Millisecond)}}, false},
		{"same key from another host", []peerConn{old, fresh},
			[]approval{{"10.0.0.2", keyA, now.Add(-250 * time.Millisecond)}}, false},
		{"approval too recent to judge", []peerConn{old, fresh},
			[]approval{{"10.0.0.1", keyA, now.Add(-50 * time.Millisecond)}}, false},
		{"approval before the old connection fell silent", []peerConn{old, fresh},
			[]approval{{"10.0.0.1", keyA, now.Add(-500 * time.Millisecond)}}, false},
		{"old connection not silent long enough", []peerConn{func() peerConn { o := old; o.last = now.Add(-100 * time.Millisecond); return o }(), fresh},
			[]approval{{"10.0.0.1", keyA, now.Add(-250 * time.Millisecond)}}, false},
		{"the approval is a heard connection's (another worker with that key)", []peerConn{old, fresh,
			{fd: 12, since: now.Add(-260 * time.Millisecond), peer: "10.0.0.1:4002", heard: true, key: keyA, worker: "wk-2", last: now}},
			[]approval{{"10.0.0.1", keyA, now.Add(-250 * time.Millisecond)}}, false},
		{"two approvals, one heard", []peerConn{old, fresh,
			{fd: 12, since: now.Add(-260 * time.Millisecond), peer: "10.0.0.1:4002", heard: true, key: keyA, worker: "wk-2", last: now}},
			[]approval{{"10.0.0.1", keyA, now.Add(-250 * time.Millisecond)}, {"10.0.0.1", keyA, now.Add(-240 * time.Millisecond)}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newAuthorizer("pool", zap.NewNop())
			a.approvals = tt.approvals
			c := &controlPlane{t: &transport{auth: a}}
			var unheard []peerConn
			for i := range tt.conns {
				pc := tt.conns[i]
				c.conns.conns = mapPut(c.conns.conns, &pc)
				if !pc.heard {
					unheard = append(unheard, pc)
				}
			}
			got := c.findRedials(now, unheard)
			if (len(got) == 1) != tt.want || len(got) > 1 {
				t.Fatalf("found %d redials (%+v), want %v", len(got), got, tt.want)
			}
			if tt.want && (got[0].old.fd != old.fd || len(got[0].fresh) != 1 || got[0].fresh[0].fd != fresh.fd) {
				t.Fatalf("found %+v, want old fd %d with fresh fd %d", got[0], old.fd, fresh.fd)
			}
		})
	}
}

func mapPut(m map[int]*peerConn, pc *peerConn) map[int]*peerConn {
	if m == nil {
		m = map[int]*peerConn{}
	}
	m[pc.fd] = pc
	return m
}

// TestControlApprovalsKept: the authorizer remembers recent approvals only,
// and a bounded number of them; hostKey reads both address forms alike.
func TestControlApprovalsKept(t *testing.T) {
	a := newAuthorizer("pool", zap.NewNop())
	now := time.Now()
	a.noteControlApproval("10.0.0.1", "k", now.Add(-time.Hour))
	for i := range approvalsKept + 10 {
		a.noteControlApproval("::ffff:10.0.0.1", "k", now.Add(time.Duration(i)))
	}
	if len(a.approvals) > approvalsKept {
		t.Fatalf("%d approvals kept, want at most %d", len(a.approvals), approvalsKept)
	}
	if n := a.controlApprovals("k", hostKey("10.0.0.1"), now.Add(-2*time.Hour), now.Add(time.Hour)); n != len(a.approvals) {
		t.Fatalf("counted %d of %d (an old one kept, or an IPv4-mapped address not matched)", n, len(a.approvals))
	}
	if hostKey("unix:/tmp/x") != "" || hostKey("") != "" {
		t.Fatal("a non-IP address must have no host key")
	}
}

// TestSilentPeerStopsCountingAfterHandshakeIvl: a peer that connects to the
// request socket and never sends a ZMTP greeting counts as a possible plain
// handler (dispatch deadlines off) only until the handshake interval, after
// which libzmq drops it.
func TestSilentPeerStopsCountingAfterHandshakeIvl(t *testing.T) {
	reqEP := freeTCPEndpoint(t)
	env := newTestEnv(t, func(h *Handler) {
		h.RequestEndpoint = reqEP
		h.ControlEndpoint = "ipc://" + filepath.Join(t.TempDir(), "ctl")
	})
	tr := env.h.pools[0].transport
	conn, err := net.Dial("tcp", reqEP[len("tcp://"):])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	waitFor(t, "the silent peer counted", func() bool { return tr.takers.Load() == 1 })
	// It reads the front end's greeting and says nothing; libzmq closes it
	// at the handshake interval.
	conn.SetReadDeadline(time.Now().Add(handshakeIvl + testDeadline))
	_, err = io.Copy(io.Discard, conn)
	if err != nil {
		t.Fatalf("the silent peer was not closed: %v", err)
	}
	waitFor(t, "the silent peer no longer counted", func() bool { return tr.takers.Load() == 0 })
	took := time.Since(start)
	if took < handshakeIvl-100*time.Millisecond {
		t.Fatalf("dropped after %v, before the handshake interval %v: something else closed it", took, handshakeIvl)
	}
	t.Logf("a silent peer counted for %v (handshake interval %v)", took.Round(time.Millisecond), handshakeIvl)
}

// TestControlKeysAt: the keys named for a connection libzmq does not read
// are those approved from its host during its handshake, each once.
func TestControlKeysAt(t *testing.T) {
	a := newAuthorizer("pool", zap.NewNop())
	since := time.Now()
	a.noteControlApproval("10.0.0.1", "before", since.Add(-time.Second))
	a.noteControlApproval("10.0.0.1", "k2", since.Add(10*time.Millisecond))
	a.noteControlApproval("10.0.0.1", "k1", since.Add(20*time.Millisecond))
	a.noteControlApproval("10.0.0.1", "k1", since.Add(30*time.Millisecond))
	a.noteControlApproval("10.0.0.2", "other-host", since.Add(10*time.Millisecond))
	for _, tc := range []struct {
		host string
		want []string
	}{
		{"10.0.0.1", []string{"k1", "k2"}},
		{"10.0.0.2", []string{"other-host"}},
		{"10.0.0.3", nil},
	} {
		if got := a.controlKeysAt(tc.host, since); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.host, got, tc.want)
		}
	}
}
