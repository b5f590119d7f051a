package caddyzmq

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	zmq "github.com/pebbe/zmq4"
	"go.uber.org/zap"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
)

// ctlWorker is a fake zmqx/1 worker: PULL + PUB + DEALER, all owned by its
// one goroutine. It streams `total` bytes for every request, in frames of
// `frame` bytes, never exceeding the credit Caddy grants, and records
// control messages it receives.
type ctlWorker struct {
	stop, done chan struct{}
	got        chan string
	maxAhead   int // most bytes ever sent beyond what Caddy had granted back
}

func startCtlWorker(t *testing.T, env *testEnv, ctlEP string, total, frame int, respond bool) *ctlWorker {
	t.Helper()
	cw := &ctlWorker{stop: make(chan struct{}), done: make(chan struct{}), got: make(chan string, 1024)}
	ready := make(chan error, 1)
	go func() {
		defer close(cw.done)
		pull, pub, dealer, closeAll, err := openZmqxWorker(env, ctlEP, "wk-test")
		defer closeAll()
		if err != nil {
			ready <- err
			return
		}
		dealer.SendBytes([]byte("HELLO 4"), 0)
		ready <- nil
		poller := zmq.NewPoller()
		poller.Add(pull, zmq.POLLIN)
		poller.Add(dealer, zmq.POLLIN)
		type stream struct {
			req    *mongrel2.Request
			sent   int
			credit int
		}
		streams := map[string]*stream{}
		for {
			select {
			case <-cw.stop:
				return
			default:
			}
			polled, _ := poller.Poll(10 * time.Millisecond)
			for _, p := range polled {
				msg, err := p.Socket.RecvBytes(0)
				if err != nil {
					continue
				}
				if p.Socket == dealer {
					cw.got <- string(msg)
					var id string
					var n int
					if _, err := fmt.Sscanf(string(msg), "CREDIT %s %d", &id, &n); err == nil && streams[id] != nil {
						streams[id].credit += n
					}
					continue
				}
				req, err := mongrel2.ParseRequest(msg)
				if err != nil || req.IsDisconnect() {
					continue
				}
				if req.Path == "/__ready" {
					pub.SendBytes(mongrel2.AppendReplyOne(nil, req.Sender, req.ConnID, okReply("")[0]), 0)
					continue
				}
				var window int
				fmt.Sscan(req.Header("ZMQX_WINDOW"), &window)
				dealer.SendBytes([]byte("ACK "+req.ConnID), 0)
				if !respond {
					continue
				}
				head := fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", total)
				pub.SendBytes(mongrel2.AppendReplyOne(nil, req.Sender, req.ConnID, []byte(head)), 0)
				streams[req.ConnID] = &stream{req: req, credit: window - len(head)}
			}
			for id, s := range streams {
				for s.sent < total {
					n := min(frame, total-s.sent)
					if n > s.credit {
						break
					}
					body := bytes.Repeat([]byte{'z'}, n)
					pub.SendBytes(mongrel2.AppendReplyOne(nil, s.req.Sender, id, body), 0)
					s.sent += n
					s.credit -= n
				}
				if s.sent == total {
					delete(streams, id)
				}
			}
		}
	}()
	if err := <-ready; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		select {
		case <-cw.stop:
		default:
			close(cw.stop)
		}
		<-cw.done
	})
	return cw
}

// openZmqxWorker creates and connects the three sockets of a fake zmqx/1
// worker (PULL, PUB, DEALER with identity id). Call it from the goroutine
// that will own the sockets, and defer the returned close there.
func openZmqxWorker(env *testEnv, ctlEP, id string) (pull, pub, dealer *zmq.Socket, closeAll func(), err error) {
	pull, _ = zmq.NewSocket(zmq.PULL)
	pub, _ = zmq.NewSocket(zmq.PUB)
	dealer, _ = zmq.NewSocket(zmq.DEALER)
	closeAll = func() {
		for _, s := range []*zmq.Socket{pull, pub, dealer} {
			s.Close()
		}
	}
	for _, s := range []*zmq.Socket{pull, pub, dealer} {
		s.SetLinger(0)
	}
	dealer.SetIdentity(id)
	err = firstErr(pub.Connect(env.repEP), dealer.Connect(ctlEP), pull.Connect(env.reqEP))
	return pull, pub, dealer, closeAll, err
}

// fakeHeartbeat keeps a fake zmqx/1 worker alive on Caddy's control
// channel: its loop calls beat every turn.
type fakeHeartbeat struct {
	dealer *zmq.Socket
	last   time.Time
}

// beat sends HB when 100 ms have passed since the last one; false once
// stop is closed (the worker's loop ends).
func (h *fakeHeartbeat) beat(stop <-chan struct{}) bool {
	select {
	case <-stop:
		return false
	default:
	}
	if time.Since(h.last) > 100*time.Millisecond {
		h.dealer.SendBytes([]byte("HB"), zmq.DONTWAIT)
		h.last = time.Now()
	}
	return true
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// TestControlCreditPacesLargeReply: a worker that only sends what it has
// credit for still delivers a reply many windows long, so Caddy grants
// credit as the client reads.
func TestControlCreditPacesLargeReply(t *testing.T) {
	ctlEP := "ipc://" + filepath.Join(t.TempDir(), "ctl")
	const window = 256 << 10
	env := newTestEnv(t, func(h *Handler) { h.ControlEndpoint = ctlEP; h.ReplyWindow = window })
	startCtlWorker(t, env, ctlEP, 20*window, 64<<10, true)
	env.waitForWorker(t)
	resp, err := http.Get(env.srv.URL + "/big")
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || n != 20*window {
		t.Fatalf("read %d bytes, err %v; want %d", n, err, 20*window)
	}
	if acks := env.h.pools[0].transport.control.acks.Load(); acks == 0 {
		t.Fatal("no ACK recorded")
	}
}

// TestControlDisconnectGoesToTheWorker: with an ACK on record, the
// disconnect reaches exactly that worker over the control channel.
func TestControlDisconnectGoesToTheWorker(t *testing.T) {
	ctlEP := "ipc://" + filepath.Join(t.TempDir(), "ctl")
	env := newTestEnv(t, func(h *Handler) { h.ControlEndpoint = ctlEP })
	cw := startCtlWorker(t, env, ctlEP, 0, 0, false)
	env.waitForWorker(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", env.srv.URL+"/wait", nil)
	errc := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	deadline := time.Now().Add(testDeadline)
	for env.h.pools[0].transport.control.acks.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // polling
	}
	// Let the request goroutine see the ACK before cancelling.
	for {
		env.h.pools[0].transport.mu.RLock()
		var acked bool
		for _, ex := range env.h.pools[0].transport.pending {
			acked = acked || ex.workerID() != ""
		}
		env.h.pools[0].transport.mu.RUnlock()
		if acked || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-errc
	for {
		select {
		case m := <-cw.got:
			if strings.HasPrefix(m, "DISCONNECT ") {
				return
			}
		case <-time.After(time.Until(deadline)):
			t.Fatal("no DISCONNECT on the control channel")
		}
	}
}

// TestWorkerLostFailsItsRequests: a worker that acknowledged a request and
// then fell silent on the control channel costs its client about the
// liveness bound, not the reply timeout; POST is not retried.
func TestWorkerLostFailsItsRequests(t *testing.T) {
	ctlEP := "ipc://" + filepath.Join(t.TempDir(), "ctl")
	env := newTestEnv(t, func(h *Handler) {
		h.ControlEndpoint = ctlEP
		h.ReplyTimeout = caddy.Duration(20 * time.Second)
	})
	startCtlWorker(t, env, ctlEP, 0, 0, false) // ACKs, never answers, never sends HB
	env.waitForWorker(t)
	start := time.Now()
	resp, err := http.Post(env.srv.URL+"/order", "text/plain", strings.NewReader("buy"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 502 {
		t.Fatalf("status %d, want 502", resp.StatusCode)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("took %s: the loss was not detected before the timeout", d)
	}
}

// TestDispatchDeadlineResends: a request that a zmqx worker never started
// (here: silently dropped, as by a worker killed with it in its queue) is
// sent again after its dispatch deadline, and succeeds.
func TestDispatchDeadlineResends(t *testing.T) {
	ctlEP := "ipc://" + filepath.Join(t.TempDir(), "ctl")
	env := newTestEnv(t, func(h *Handler) {
		h.ControlEndpoint = ctlEP
		h.DispatchTimeout = caddy.Duration(200 * time.Millisecond)
	})
	stop, done := make(chan struct{}), make(chan struct{})
	deadlines := make(chan string, 16)
	go func() {
		defer close(done)
		pull, pub, dealer, closeAll, err := openZmqxWorker(env, ctlEP, "wk-dropper")
		defer closeAll()
		if err != nil {
			t.Error(err)
			return
		}
		pull.SetRcvtimeo(20 * time.Millisecond)
		dropped := false
		hb := fakeHeartbeat{dealer: dealer}
		for {
			if !hb.beat(stop) {
				return
			}
			msg, err := pull.RecvBytes(0)
			if err != nil {
				continue
			}
			req, err := mongrel2.ParseRequest(msg)
			if err != nil || req.IsDisconnect() {
				continue
			}
			if req.Path == "/once" {
				deadlines <- req.Header("ZMQX_DEADLINE")
				if !dropped {
					dropped = true
					continue
				}
			}
			dealer.SendBytes([]byte("ACK "+req.ConnID), 0)
			pub.SendBytes(mongrel2.AppendReplyOne(nil, req.Sender, req.ConnID, okReply("done")[0]), 0)
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	env.waitForWorker(t)
	env.waitDeadlines(t)
	resp, err := http.Post(env.srv.URL+"/once", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "done" {
		t.Fatalf("got %d %q", resp.StatusCode, b)
	}
	// The worker's ACK and reply race (different sockets): its id is
	// known only if the ACK came first.
	if w := resp.Header.Get("X-Zmq-Worker"); w != "" && w != "wk-dropper" {
		t.Errorf("X-Zmq-Worker %q, want wk-dropper (or empty)", w)
	}
	resp.Header.Del("X-Zmq-Worker")
	wantPlaceholders(t, resp, "default", "", 0, 1)
	if len(deadlines) != 2 {
		t.Fatalf("the worker saw the request %d times, want 2 (dropped, then re-sent)", len(deadlines))
	}
	if d := <-deadlines; d == "" {
		t.Fatal("no ZMQX_DEADLINE header")
	}
}

// TestDroppedRequestFailsExchange: a REQ that the full control queue drops
// fails its exchange at once (errReqNotQueued: the worker is alive, so its
// pin stays; the client gets 503, a broadcast reports it not sent) rather
// than leaving the client to wait for the reply timeout; an advisory
// message dropped fails nothing.
func TestDroppedRequestFailsExchange(t *testing.T) {
	tr := &transport{pending: map[uint64]*exchange{}}
	c := &controlPlane{t: tr, logger: zap.NewNop(), in: make(chan ctlMsg, 1)}
	tr.control = c
	c.in <- ctlMsg{worker: "wk"} // the queue is full
	ex := tr.register(1<<20, false)
	c.credit("wk", ex.id, 10)
	if _, err := ex.take(nil); err != nil {
		t.Fatalf("a dropped CREDIT failed the exchange: %v", err)
	}
	frame := mongrel2.AppendRequest(nil, "uuid", strconv.FormatUint(ex.id, 10), "/", []byte("{}"), nil)
	c.sendRequest("wk", frame)
	_, err := ex.take(nil)
	if !errors.Is(err, errReqNotQueued) || !errors.Is(err, errQueueFull) || errors.Is(err, errAddresseeGone) {
		t.Fatalf("exchange error after its REQ was dropped = %v, want errReqNotQueued (an errQueueFull)", err)
	}
}

// Right after dropKeys closed request connections of zmqx workers, the
// connection count says nothing (often zero): requests still get a
// dispatch deadline, so that one PUSH handed to a closing connection is
// sent again instead of waiting out reply_timeout (TestCurveKeyRemovalUnderLoad
// found a 504 so, under load).
func TestCoversPeersDuringRedialGrace(t *testing.T) {
	c := &controlPlane{t: &transport{}, logger: zap.NewNop()}
	if c.coversPeers() {
		t.Fatal("covered with no connection at all")
	}
	c.t.redialUntil.Store(time.Now().Add(redialGrace).UnixNano())
	if !c.coversPeers() {
		t.Fatal("not covered within the redial grace")
	}
	c.t.redialUntil.Store(time.Now().Add(-time.Millisecond).UnixNano())
	if c.coversPeers() {
		t.Fatal("still covered after the redial grace")
	}
}
