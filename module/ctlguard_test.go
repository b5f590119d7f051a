package caddyzmq

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

// curveDealer connects a DEALER with routing id id and keypair kp to the
// control endpoint, as a CURVE client of server; closed with the test.
func curveDealer(t *testing.T, ep, id string, server string, kp keyPair) *zmq.Socket {
	t.Helper()
	d, err := zmq.NewSocket(zmq.DEALER)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.SetLinger(0); d.Close() })
	if err := firstErr(d.SetLinger(0), d.SetIdentity(id), curveClient(d, server, kp), d.Connect(ep)); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestWorkerIDCannotBeTakenOver: with CURVE, a second allowed key that
// connects under a worker's id gets none of the messages addressed to that
// id; the worker keeps them, and the impostor's connection, which libzmq
// ignores, is closed and counted.
func TestWorkerIDCannotBeTakenOver(t *testing.T) {
	server, good, rogue := mustKeyPair(t), mustKeyPair(t), mustKeyPair(t)
	ctlEP := "ipc://" + filepath.Join(t.TempDir(), "ctl")
	env := newTestEnv(t, func(h *Handler) {
		h.ControlEndpoint = ctlEP
		h.Curve = &Curve{SecretKey: server.secret, Allow: []string{good.public, rogue.public}}
	})
	tr := env.h.pools[0].transport
	worker := curveDealer(t, ctlEP, "wk-1", server.public, good)
	if _, err := worker.SendBytes(zmqx.AppendHello(nil, 4), 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the worker on the control channel", func() bool { return tr.control.isLive("wk-1") })

	impostor := curveDealer(t, ctlEP, "wk-1", server.public, rogue)
	mon := "inproc://impostor-" + t.Name()
	if err := impostor.Monitor(mon, zmq.EVENT_HANDSHAKE_SUCCEEDED|zmq.EVENT_DISCONNECTED); err != nil {
		t.Fatal(err)
	}
	events, err := zmq.NewSocket(zmq.PAIR)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		impostor.Monitor("", 0) // before the reader goes: see the handshake helper in curve_test.go
		events.Close()
	})
	if err := firstErr(events.SetRcvtimeo(testDeadline), events.Connect(mon)); err != nil {
		t.Fatal(err)
	}
	if ev, _, _, err := events.RecvEvent(0); err != nil || ev != zmq.EVENT_HANDSHAKE_SUCCEEDED {
		t.Fatalf("impostor: %v %v, want its handshake to succeed (its key is allowed)", ev, err)
	}
	refused := tr.auth.refused.Load()
	if _, err := impostor.SendBytes(zmqx.AppendHello(nil, 4), 0); err != nil {
		t.Fatal(err)
	}
	// Messages for wk-1, sent after the impostor is in: each reaches the
	// worker, none the impostor.
	for i := range 20 {
		tr.control.credit("wk-1", uint64(i+1), 100)
		worker.SetRcvtimeo(testDeadline)
		if _, err := worker.RecvBytes(0); err != nil {
			t.Fatalf("message %d did not reach the worker: %v", i, err)
		}
		worker.SendBytes(zmqx.AppendHeartbeat(nil), 0)
		impostor.SetRcvtimeo(0)
		if msg, err := impostor.RecvBytes(zmq.DONTWAIT); err == nil {
			t.Fatalf("the impostor received %q, addressed to the worker", msg)
		}
	}
	// libzmq never reads the impostor: it is closed as a silent
	// connection, and counted. The worker keeps beating meanwhile.
	events.SetRcvtimeo(100 * time.Millisecond)
	for deadline := time.Now().Add(testDeadline); ; {
		worker.SendBytes(zmqx.AppendHeartbeat(nil), 0)
		ev, _, _, err := events.RecvEvent(0)
		if err == nil && ev == zmq.EVENT_DISCONNECTED {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the impostor's connection was not closed")
		}
	}
	waitFor(t, "the impostor's connection counted as refused", func() bool { return tr.auth.refused.Load() > refused })
	if !tr.control.isLive("wk-1") {
		t.Fatal("the worker is no longer live")
	}
}

// TestShutdownConnChecksTheDescriptor: a tracked connection is shut down
// only while its descriptor still holds the connection seen at accept.
func TestShutdownConnChecksTheDescriptor(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	raw, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	raw.Control(func(f uintptr) { fd = int(f) })
	var ct connTracker
	ct.event(zmq.EVENT_ACCEPTED, fd, time.Now())
	pc := ct.find(func(*peerConn) bool { return true })[0]
	if pc.peer != client.LocalAddr().String() || pc.local != ln.Addr().String() {
		t.Fatalf("tracked %s -> %s, want %s -> %s", pc.peer, pc.local, client.LocalAddr(), ln.Addr())
	}
	other := pc
	other.peer = "127.0.0.1:1"
	if shutdownConn(other) {
		t.Fatal("shut down a descriptor that holds another connection")
	}
	if !shutdownConn(pc) {
		t.Fatal("did not shut down the tracked connection")
	}
	client.SetReadDeadline(time.Now().Add(testDeadline))
	if _, err := client.Read(make([]byte, 1)); err == nil {
		t.Fatal("the peer still reads after the shutdown")
	}
	if ct.event(zmq.EVENT_DISCONNECTED, fd, time.Now()) == nil || len(ct.find(func(*peerConn) bool { return true })) != 0 {
		t.Fatal("the disconnection did not end the tracked connection")
	}
}

// TestWorkerRedialsUnderItsID: a worker that comes back under its id with
// its key (a new connection after its old one ended) gets its messages
// again: handover off does not lock it out.
func TestWorkerRedialsUnderItsID(t *testing.T) {
	server, good := mustKeyPair(t), mustKeyPair(t)
	ctlEP := "ipc://" + filepath.Join(t.TempDir(), "ctl")
	env := newTestEnv(t, func(h *Handler) {
		h.ControlEndpoint = ctlEP
		h.Curve = &Curve{SecretKey: server.secret, Allow: []string{good.public}}
	})
	tr := env.h.pools[0].transport
	for round := range 3 {
		d := curveDealer(t, ctlEP, "wk-1", server.public, good)
		d.SetRcvtimeo(50 * time.Millisecond)
		waitFor(t, fmt.Sprintf("round %d: a message to reach the worker", round), func() bool {
			d.SendBytes(zmqx.AppendHello(nil, 4), zmq.DONTWAIT)
			tr.control.credit("wk-1", 1, 100)
			_, err := d.RecvBytes(0)
			return err == nil
		})
		d.Close()
	}
}

// monitored returns a PAIR reading sock's DISCONNECTED events.
func monitored(t *testing.T, sock *zmq.Socket) *zmq.Socket {
	t.Helper()
	ep := fmt.Sprintf("inproc://mon-%d", testMonitorSeq.Add(1))
	if err := sock.Monitor(ep, zmq.EVENT_DISCONNECTED); err != nil {
		t.Fatal(err)
	}
	mon, err := zmq.NewSocket(zmq.PAIR)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sock.Monitor("", 0) // before the reader goes: see the handshake helper in curve_test.go
		mon.Close()
	})
	if err := firstErr(mon.SetRcvtimeo(50*time.Millisecond), mon.Connect(ep)); err != nil {
		t.Fatal(err)
	}
	return mon
}

// TestRemovedKeyDropped: a reload that removes a connected worker's key
// closes its control connection and its request connection, forgets it on
// the control channel, and drops what it sends; the worker that stays
// keeps its control connection.
func TestRemovedKeyDropped(t *testing.T) {
	server, stays, removed := mustKeyPair(t), mustKeyPair(t), mustKeyPair(t)
	ctlEP := "ipc://" + filepath.Join(t.TempDir(), "ctl")
	env := newTestEnv(t, func(h *Handler) {
		h.ControlEndpoint = ctlEP
		h.Curve = &Curve{SecretKey: server.secret, Allow: []string{stays.public, removed.public}}
	})
	tr := env.h.pools[0].transport
	type worker struct {
		ctl, pull, ctlMon, pullMon *zmq.Socket
	}
	start := func(id string, kp keyPair) worker {
		w := worker{ctl: curveDealer(t, ctlEP, id, server.public, kp)}
		pull, err := zmq.NewSocket(zmq.PULL)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pull.SetLinger(0); pull.Close() })
		w.pull, w.ctlMon, w.pullMon = pull, monitored(t, w.ctl), monitored(t, pull)
		if err := firstErr(curveClient(pull, server.public, kp), pull.Connect(env.reqEP)); err != nil {
			t.Fatal(err)
		}
		return w
	}
	keep, gone := start("wk-stays", stays), start("wk-gone", removed)
	for _, id := range []string{"wk-stays", "wk-gone"} {
		w := map[string]worker{"wk-stays": keep, "wk-gone": gone}[id]
		waitFor(t, id+" on the control channel", func() bool {
			w.ctl.SendBytes(zmqx.AppendHello(nil, 4), zmq.DONTWAIT)
			return tr.control.isLive(id)
		})
	}
	waitFor(t, "both request connections", func() bool { return tr.peers.Load() == 2 })

	tr.dropKeys(tr.auth.setAllowed(map[string]string{stays.public: "inline"}))

	disconnected := func(mon *zmq.Socket) bool {
		ev, _, _, err := mon.RecvEvent(0)
		return err == nil && ev == zmq.EVENT_DISCONNECTED
	}
	waitFor(t, "the removed worker's control connection closed", func() bool { return disconnected(gone.ctlMon) })
	waitFor(t, "the removed worker's request connection closed", func() bool { return disconnected(gone.pullMon) })
	if tr.control.isLive("wk-gone") {
		t.Fatal("the removed worker is still live on the control channel")
	}
	// The worker that stays: its control connection is untouched.
	keep.ctl.SendBytes(zmqx.AppendHeartbeat(nil), 0)
	if disconnected(keep.ctlMon) {
		t.Fatal("the control connection of the worker that stays was closed")
	}
	if !tr.control.isLive("wk-stays") {
		t.Fatal("the worker that stays is not live")
	}
	// What the removed key sent before its connection closed is dropped;
	// a request it acknowledged (it has it) is lost with it.
	acked := tr.register(0, false)
	defer tr.unregister(acked)
	tr.control.handleFrom("wk-gone", removed.public, zmqx.AppendAck(nil, fmt.Sprint(acked.id)))
	acked.mu.Lock()
	err := acked.err
	acked.mu.Unlock()
	if !errors.Is(err, errWorkerLost) || acked.workerID() != "" {
		t.Fatalf("a request the removed worker acknowledged: error %v, holder %q; want it lost, held by none", err, acked.workerID())
	}
	ex := tr.register(0, false)
	defer tr.unregister(ex)
	before := tr.badReplies.Load()
	reply := mongrel2.AppendReplyOne(nil, tr.cfg.sender, fmt.Sprint(ex.id), okReply("forged")[0])
	f := newFrame(len(reply))
	copy(f.buf, reply)
	tr.dispatchFrom(f, removed.public)
	if tr.badReplies.Load() != before+1 {
		t.Fatal("a reply from the removed key was not dropped")
	}
}

// TestRemovedKeySilentWorkerDropped: a worker whose key is removed while it
// has only a request connection (a pool without control channel, and it
// has not replied yet: no message names its key) loses that connection
// too: ZAP saw the key's host at the handshake.
func TestRemovedKeySilentWorkerDropped(t *testing.T) {
	server, stays, removed := mustKeyPair(t), mustKeyPair(t), mustKeyPair(t)
	env := newTestEnv(t, func(h *Handler) {
		h.Curve = &Curve{SecretKey: server.secret, Allow: []string{stays.public, removed.public}}
	})
	tr := env.h.pools[0].transport
	pull, err := zmq.NewSocket(zmq.PULL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pull.SetLinger(0); pull.Close() })
	mon := monitored(t, pull)
	if err := firstErr(curveClient(pull, server.public, removed), pull.Connect(env.reqEP)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the request connection", func() bool { return tr.peers.Load() == 1 })

	tr.dropKeys(tr.auth.setAllowed(map[string]string{stays.public: "inline"}))

	waitFor(t, "the removed worker's request connection closed", func() bool {
		ev, _, _, err := mon.RecvEvent(0)
		return err == nil && ev == zmq.EVENT_DISCONNECTED
	})
	if hs := tr.auth.takeHosts(removed.public); len(hs) != 0 {
		t.Fatalf("hosts of the removed key still remembered: %q", hs)
	}
}

// TestJudgeReplyGone: a reply connection that ended is reported, naming
// the worker, its key and the cap, only when that key's worker stays on
// the control channel over a connection older than the end, and only once
// it has had time to show otherwise.
func TestJudgeReplyGone(t *testing.T) {
	const key, worker = "key-1", "wk-1"
	now := time.Now()
	for _, tc := range []struct {
		name       string
		ctlSince   time.Duration // control connection accepted, relative to the reply's end
		draining   bool
		judgedLate time.Duration
		want       bool
	}{
		{"worker stays", -time.Minute, false, replyGoneJudgeAfter, true},
		{"judged too early", -time.Minute, false, replyGoneJudgeAfter / 2, false},
		{"worker restarted", time.Second, false, replyGoneJudgeAfter, false},
		{"worker leaving", -time.Minute, true, replyGoneJudgeAfter, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			core, logs := observer.New(zap.WarnLevel)
			tr := &transport{logger: zap.New(core), cfg: transportConfig{maxReplyFrame: 1234}}
			tr.auth = newAuthorizer("pool", tr.logger)
			tr.control = newControlPlane(tr, "")
			c := tr.control
			c.workers[worker] = &workerInfo{lastSeen: now, draining: tc.draining}
			c.ids.admit(worker, key)
			c.conns.event(zmq.EVENT_ACCEPTED, 1000, now.Add(tc.ctlSince))
			c.conns.note(1000, key, worker)
			tr.repConns.event(zmq.EVENT_ACCEPTED, 1001, now.Add(-time.Minute))
			tr.repConns.note(1001, key, "")
			if pc := tr.repConns.event(zmq.EVENT_DISCONNECTED, 1001, now); pc != nil {
				tr.replyConnGone(pc)
			}
			c.judgeReplyGone(time.Now().Add(tc.judgedLate)) // after the end noted
			got := logs.FilterField(zap.Int64("max_frame_bytes", 1234)).FilterField(zap.String("worker_key", key)).Len()
			if got != map[bool]int{true: 1, false: 0}[tc.want] {
				t.Fatalf("%d warnings, want one: %v", got, tc.want)
			}
		})
	}
}
