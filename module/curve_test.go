package caddyzmq

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	zmq "github.com/pebbe/zmq4"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

func mustKeyPair(t *testing.T) keyPair {
	t.Helper()
	kp, err := newKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

// curveClient makes sock a CURVE client of server with keypair kp.
func curveClient(sock *zmq.Socket, server string, kp keyPair) error {
	return firstErr(sock.SetCurveServerkey(server), sock.SetCurvePublickey(kp.public), sock.SetCurveSecretkey(kp.secret))
}

// waitFor polls cond until it holds, or fails the test after testDeadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testDeadline)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling interval, not synchronisation
	}
}

// TestRogueWorkerCannotTouchAnothersRequest: a worker that holds a
// request (it ACKed it) answers it, and another worker on the same pool
// cannot fail it (ACK then RESET), hand it back (NACK), grant its credit or,
// with CURVE, answer it with a forged reply, even knowing its connection id.
// Without CURVE, replies carry no identity; the defence there is that ids
// cannot be guessed (TestConnIDsUnguessable).
func TestRogueWorkerCannotTouchAnothersRequest(t *testing.T) {
	for _, curve := range []bool{true, false} {
		t.Run(map[bool]string{true: "curve", false: "plaintext"}[curve], func(t *testing.T) {
			rogueWorkerAttack(t, curve)
		})
	}
}

func rogueWorkerAttack(t *testing.T, curve bool) {
	server, good, rogue := mustKeyPair(t), mustKeyPair(t), mustKeyPair(t)
	ctlEP := "ipc://" + filepath.Join(t.TempDir(), "ctl")
	env := newTestEnv(t, func(h *Handler) {
		h.ControlEndpoint = ctlEP
		h.DispatchTimeout = -1
		if curve {
			h.Curve = &Curve{SecretKey: server.secret, Allow: []string{good.public, rogue.public}}
		}
	})
	secure := func(kp keyPair, socks ...*zmq.Socket) error {
		if !curve {
			return nil
		}
		for _, s := range socks {
			if err := curveClient(s, server.public, kp); err != nil {
				return err
			}
		}
		return nil
	}

	held := make(chan *mongrel2.Request, 1)
	release := make(chan struct{})
	var executions atomic.Int32
	stop, done := make(chan struct{}), make(chan struct{})
	go func() { // the good worker
		defer close(done)
		pull, _ := zmq.NewSocket(zmq.PULL)
		pub, _ := zmq.NewSocket(zmq.PUB)
		dealer, _ := zmq.NewSocket(zmq.DEALER)
		defer func() {
			for _, s := range []*zmq.Socket{pull, pub, dealer} {
				s.SetLinger(0)
				s.Close()
			}
		}()
		dealer.SetIdentity("wk-good")
		pull.SetRcvtimeo(20 * time.Millisecond)
		if err := firstErr(secure(good, pull, pub, dealer), pub.Connect(env.repEP), dealer.Connect(ctlEP), pull.Connect(env.reqEP)); err != nil {
			t.Error(err)
			return
		}
		var waiting *mongrel2.Request
		for {
			select {
			case <-stop:
				return
			case <-release:
				pub.SendBytes(mongrel2.AppendReplyOne(nil, waiting.Sender, waiting.ConnID, okReply("from-good")[0]), 0)
				release = nil
			default:
			}
			dealer.SendBytes(zmqx.AppendHeartbeat(nil), zmq.DONTWAIT)
			msg, err := pull.RecvBytes(0)
			if err != nil {
				continue
			}
			req, err := mongrel2.ParseRequest(msg)
			if err != nil || req.IsDisconnect() {
				continue
			}
			dealer.SendBytes(zmqx.AppendAck(nil, req.ConnID), 0)
			if req.Path != "/held" {
				pub.SendBytes(mongrel2.AppendReplyOne(nil, req.Sender, req.ConnID, okReply("ready")[0]), 0)
				continue
			}
			executions.Add(1)
			waiting = req
			held <- req
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	env.waitForWorker(t)
	tr := env.h.pools[0].transport

	type result struct {
		status int
		body   string
		err    error
	}
	res := make(chan result, 1)
	go func() {
		resp, err := http.Post(env.srv.URL+"/held", "text/plain", strings.NewReader("pay once"))
		if err != nil {
			res <- result{err: err}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		res <- result{status: resp.StatusCode, body: string(b)}
	}()
	req := <-held
	waitFor(t, "the good worker's ACK", func() bool {
		ex := tr.lookup(mustUint(t, req.ConnID))
		return ex != nil && ex.workerID() == "wk-good"
	})

	// The rogue: its own sockets, an allowed key of its own, and the id.
	pub, _ := zmq.NewSocket(zmq.PUB)
	dealer, _ := zmq.NewSocket(zmq.DEALER)
	defer func() {
		for _, s := range []*zmq.Socket{pub, dealer} {
			s.SetLinger(0)
			s.Close()
		}
	}()
	dealer.SetIdentity("wk-rogue")
	if err := firstErr(secure(rogue, pub, dealer), pub.Connect(env.repEP), dealer.Connect(ctlEP)); err != nil {
		t.Fatal(err)
	}
	if curve {
		// Its forged reply: it must get through to the SUB (the rogue is
		// allowed), so wait for its subscription, then count it dropped.
		before := tr.badReplies.Load()
		waitFor(t, "the forged reply to be dropped", func() bool {
			pub.SendBytes(mongrel2.AppendReplyOne(nil, req.Sender, req.ConnID, okReply("forged")[0]), zmq.DONTWAIT)
			return tr.badReplies.Load() > before
		})
	}
	for _, m := range [][]byte{
		zmqx.AppendHello(nil, 1),
		zmqx.AppendNack(nil, req.ConnID),
		zmqx.AppendAck(nil, req.ConnID),
		zmqx.AppendUploadCredit(nil, req.ConnID, 1000000),
		zmqx.AppendReset(nil),
	} {
		if _, err := dealer.SendBytes(m, 0); err != nil {
			t.Fatal(err)
		}
	}
	// Messages of one DEALER are handled in order: once this one is in,
	// so is the attack.
	dealer.SendBytes(zmqx.AppendHello(nil, 7), 0)
	waitFor(t, "the rogue's messages to be handled", func() bool {
		c := tr.control
		c.mu.Lock()
		defer c.mu.Unlock()
		wi := c.workers["wk-rogue"]
		return wi != nil && wi.maxConcurrent == 7
	})
	if ex := tr.lookup(mustUint(t, req.ConnID)); ex == nil || ex.workerID() != "wk-good" {
		t.Fatalf("after the attack the request is no longer held by the good worker (exchange %v)", ex)
	}
	close(release)
	r := <-res
	if r.err != nil || r.status != 200 || r.body != "from-good" {
		t.Fatalf("client got %d %q (%v), want 200 from-good", r.status, r.body, r.err)
	}
	if n := executions.Load(); n != 1 {
		t.Fatalf("the POST ran %d times, want 1", n)
	}
}

var testMonitorSeq atomic.Uint64

func mustUint(t *testing.T, s string) uint64 {
	t.Helper()
	n, ok := mongrel2.ParseUint([]byte(s))
	if !ok {
		t.Fatalf("bad connection id %q", s)
	}
	return n
}

// TestConnIDsUnguessable: ids are random below 2^53, not a sequence a peer
// could continue.
func TestConnIDsUnguessable(t *testing.T) {
	tr := &transport{pending: make(map[uint64]*exchange)}
	seen := map[uint64]bool{}
	var prev uint64
	near := 0
	for range 10000 {
		ex := tr.register(0, false)
		if ex.id == 0 || ex.id >= 1<<53 || seen[ex.id] {
			t.Fatalf("id %d: zero, too big or repeated", ex.id)
		}
		if d := int64(ex.id - prev); d > -1<<20 && d < 1<<20 {
			near++
		}
		seen[ex.id], prev = true, ex.id
	}
	if near > 2 {
		t.Fatalf("%d of 10000 ids within 2^20 of the previous one: predictable", near)
	}
}

// TestCurveZAP: with CURVE on, only allowed keys complete the handshake;
// an unknown key, a plaintext peer and a client of another server key are
// refused and counted, and the allow-list follows reloads (the sockets stay).
func TestCurveZAP(t *testing.T) {
	server, good, other := mustKeyPair(t), mustKeyPair(t), mustKeyPair(t)
	env := newTestEnv(t, func(h *Handler) {
		h.Curve = &Curve{SecretKey: server.secret, Allow: []string{good.public}}
	})
	tr := env.h.pools[0].transport
	// A PUB whose handshake succeeds subscribes the SUB: a request then
	// gets a reply. Each client is checked through its own monitor.
	handshake := func(serverKey string, kp *keyPair) zmq.Event {
		t.Helper()
		pub, _ := zmq.NewSocket(zmq.PUB)
		defer func() { pub.SetLinger(0); pub.Close() }()
		if kp != nil {
			if err := curveClient(pub, serverKey, *kp); err != nil {
				t.Fatal(err)
			}
			pub.SetHandshakeIvl(time.Second)
		}
		addr := fmt.Sprintf("inproc://curve-test-mon-%d", testMonitorSeq.Add(1))
		if err := pub.Monitor(addr, zmq.EVENT_HANDSHAKE_SUCCEEDED|zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL|
			zmq.EVENT_HANDSHAKE_FAILED_AUTH|zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL|zmq.EVENT_DISCONNECTED); err != nil {
			t.Fatal(err)
		}
		mon, _ := zmq.NewSocket(zmq.PAIR)
		defer func() {
			// libzmq sends monitor events with a blocking send: stop
			// monitoring before the reader goes, or an event for a PAIR
			// with no reader blocks the context's I/O thread that emits
			// it, and with it every socket of the context.
			pub.Monitor("", 0)
			mon.Close()
		}()
		mon.SetRcvtimeo(testDeadline)
		mon.Connect(addr)
		if err := pub.Connect(env.repEP); err != nil {
			t.Fatal(err)
		}
		ev, _, _, err := mon.RecvEvent(0)
		if err != nil {
			t.Fatalf("no handshake outcome: %v", err)
		}
		return ev
	}
	if ev := handshake(server.public, &good); ev != zmq.EVENT_HANDSHAKE_SUCCEEDED {
		t.Fatalf("allowed key: %v, want HANDSHAKE_SUCCEEDED", ev)
	}
	refusedBefore := tr.auth.refused.Load()
	for name, c := range map[string]struct {
		server string
		kp     *keyPair
	}{
		"unknown key":      {server.public, &other},
		"plaintext":        {"", nil},
		"wrong server key": {other.public, &good},
	} {
		if ev := handshake(c.server, c.kp); ev == zmq.EVENT_HANDSHAKE_SUCCEEDED {
			t.Errorf("%s: handshake succeeded", name)
		}
	}
	waitFor(t, "the refusals to be counted", func() bool { return tr.auth.refused.Load() >= refusedBefore+3 })

	// Reload: the other key is allowed now, on the same sockets.
	h2 := env.provision(t, func(h *Handler) {
		h.Curve = &Curve{SecretKey: server.secret, Allow: []string{good.public, other.public}}
	})
	defer h2.Cleanup()
	if h2.pools[0].transport != tr {
		t.Fatal("the reload did not share the sockets")
	}
	if ev := handshake(server.public, &other); ev != zmq.EVENT_HANDSHAKE_SUCCEEDED {
		t.Fatalf("key allowed by reload: %v, want HANDSHAKE_SUCCEEDED", ev)
	}
	// A reload cannot change the key fixed in the sockets.
	h3 := &Handler{RequestEndpoint: env.reqEP, ReplyEndpoint: env.repEP,
		Curve: &Curve{SecretKey: other.secret, Allow: []string{good.public}}}
	if err := provisionErr(t, h3); err == nil || !strings.Contains(err.Error(), "curve settings") {
		t.Fatalf("changing the front end key on bound sockets: %v, want an error naming curve settings", err)
	}
}

// TestReplyFrameCap: a peer announcing a frame over the cap is cut off
// before Caddy takes it in (ZMQ_MAXMSGSIZE), and nothing is dispatched.
func TestReplyFrameCap(t *testing.T) {
	// The cap is max(max_buffered_reply, reply_window) plus slack.
	env := newTestEnv(t, func(h *Handler) { h.MaxBufferedReply, h.ReplyWindow = 256<<10, 256<<10 })
	if c := env.h.pools[0].transport.cfg.maxReplyFrame; c >= 4<<20 {
		t.Fatalf("frame cap %d: the test's frame would fit", c)
	}
	tr := env.h.pools[0].transport
	pub, _ := zmq.NewSocket(zmq.PUB)
	defer func() { pub.SetLinger(0); pub.Close() }()
	addr := fmt.Sprintf("inproc://curve-test-mon-%d", testMonitorSeq.Add(1))
	if err := pub.Monitor(addr, zmq.EVENT_HANDSHAKE_SUCCEEDED|zmq.EVENT_DISCONNECTED); err != nil {
		t.Fatal(err)
	}
	mon, _ := zmq.NewSocket(zmq.PAIR)
	defer func() {
		pub.Monitor("", 0) // before the reader goes: see the handshake helper in curve_test.go
		mon.Close()
	}()
	mon.SetRcvtimeo(testDeadline)
	mon.Connect(addr)
	if err := pub.Connect(env.repEP); err != nil {
		t.Fatal(err)
	}
	if ev, _, _, err := mon.RecvEvent(0); err != nil || ev != zmq.EVENT_HANDSHAKE_SUCCEEDED {
		t.Fatalf("handshake: %v %v", ev, err)
	}
	big := make([]byte, 4<<20)
	copy(big, tr.cfg.sender+" 1:1, ")
	waitFor(t, "the subscription", func() bool {
		// PUB drops what it sends before the subscription arrives; the
		// cap is proven by the disconnect that follows a send that went out.
		pub.SendBytes(big, zmq.DONTWAIT)
		ev, _, _, err := mon.RecvEvent(zmq.DONTWAIT)
		return err == nil && ev == zmq.EVENT_DISCONNECTED
	})
	if n := tr.replies.Load() + tr.badReplies.Load(); n != 0 {
		t.Fatalf("%d frames dispatched, want 0: the oversized one was taken in", n)
	}
}

// TestReplyFrameOverBufferBlamesTheWorker: one frame bigger than
// max_buffered_reply is the worker's doing, and the error says so.
func TestReplyFrameOverBufferBlamesTheWorker(t *testing.T) {
	ex := newExchange(1, 100)
	f := newFrame(200)
	ex.deliver(f.buf, f, true)
	f.release()
	_, err := ex.take(nil)
	if err == nil || !strings.Contains(err.Error(), "single reply frame of 200 bytes") || strings.Contains(err.Error(), "slower") {
		t.Fatalf("err = %v, want the frame-too-big error", err)
	}
}

func provisionErr(t *testing.T, h *Handler) error {
	t.Helper()
	ctx, cancel := newCaddyContext()
	t.Cleanup(cancel)
	err := h.Provision(ctx)
	if err == nil {
		h.Cleanup()
	}
	return err
}

func newCaddyContext() (caddy.Context, context.CancelFunc) {
	return caddy.NewContext(caddy.Context{Context: context.Background()})
}

// TestPlaintextPoolBesideCurve: a pool marked plaintext serves a plain
// Mongrel2 handler while another pool of the same handler runs CURVE (and
// so the process's ZAP handler).
func TestPlaintextPoolBesideCurve(t *testing.T) {
	server := mustKeyPair(t)
	dir := t.TempDir()
	ep := func(name string) string { return "ipc://" + filepath.Join(dir, name) }
	h := &Handler{ReplyTimeout: caddy.Duration(testDeadline),
		Curve: &Curve{SecretKey: server.secret},
		Pools: []Pool{
			{Name: "secure", RequestEndpoint: ep("sreq"), ReplyEndpoint: ep("srep")},
			{Name: "legacy", RequestEndpoint: ep("lreq"), ReplyEndpoint: ep("lrep"), Plaintext: true},
		}}
	ctx, cancel := newCaddyContext()
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Cleanup() })
	if h.pools[0].transport.auth == nil || h.pools[1].transport.auth != nil {
		t.Fatal("curve is not on the secure pool only")
	}
	startFakeWorker(t, ep("lreq"), ep("lrep"), func(*mongrel2.Request) [][]byte { return okReply("legacy") })
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(w, r, nil) }))
	t.Cleanup(srv.Close)
	client := &http.Client{Timeout: 2 * time.Second}
	waitFor(t, "the plaintext handler to answer", func() bool {
		resp, err := client.Get(srv.URL + "/")
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode == 200 && string(b) == "legacy"
	})
}
