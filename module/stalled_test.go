package caddyzmq

import (
	"path/filepath"
	"strconv"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

// TestStalledRequestsWait: REQs addressed to a worker whose queue is full
// are held, in order, until it reads; none fails its exchange (a worker
// that is behind is not a worker gone), and all arrive once it reads.
func TestStalledRequestsWait(t *testing.T) {
	zctx, err := zmq.NewContext()
	if err != nil {
		t.Fatal(err)
	}
	ep := "ipc://" + filepath.Join(t.TempDir(), "ctl")
	router, err := zctx.NewSocket(zmq.ROUTER)
	if err != nil {
		t.Fatal(err)
	}
	defer router.Close()
	router.SetLinger(0)
	router.SetRouterMandatory(1)
	router.SetSndhwm(2)
	if err := router.Bind(ep); err != nil {
		t.Fatal(err)
	}
	dealer, err := zctx.NewSocket(zmq.DEALER)
	if err != nil {
		t.Fatal(err)
	}
	defer dealer.Close()
	dealer.SetLinger(0)
	dealer.SetRcvhwm(2)
	dealer.SetIdentity("wk")
	if err := dealer.Connect(ep); err != nil {
		t.Fatal(err)
	}
	dealer.SendBytes(zmqx.AppendHeartbeat(nil), 0)
	if _, err := router.RecvMessageBytes(0); err != nil {
		t.Fatal(err)
	}

	tr := &transport{pending: make(map[uint64]*exchange)}
	c := &controlPlane{t: tr}
	const n = 60
	for id := uint64(1); id <= n; id++ {
		ex := newExchange(id, 1<<20)
		tr.pending[id] = ex
		frame := mongrel2.AppendRequest(nil, "fe", strconv.FormatUint(id, 10), "/", []byte("{}"), nil)
		c.deliver(router, ctlMsg{worker: "wk", payload: zmqx.AppendReq(nil, frame), req: true})
	}
	if c.stalledN == 0 {
		t.Fatal("the worker read nothing, yet no REQ was held")
	}
	dealer.SetRcvtimeo(20 * time.Millisecond)
	next := uint64(1)
	for deadline := time.Now().Add(20 * time.Second); next <= n; {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d REQs arrived", next-1, n)
		}
		c.retryStalled(router) // what the owner does on every wake-up
		msg, err := dealer.RecvBytes(0)
		if err != nil {
			continue
		}
		m, err := zmqx.Parse(msg)
		if err != nil || m.Verb != zmqx.Req {
			t.Fatalf("worker got %q", msg)
		}
		req, err := mongrel2.ParseRequest(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		if req.ConnID != strconv.FormatUint(next, 10) {
			t.Fatalf("REQ %s arrived where %d was due: out of order", req.ConnID, next)
		}
		next++
	}
	if c.stalledN != 0 || len(c.stalled) != 0 {
		t.Fatalf("%d REQs still held after all arrived", c.stalledN)
	}
	for id, ex := range tr.pending {
		if _, err := ex.take(nil); err != nil {
			t.Fatalf("exchange %d failed: %v", id, err)
		}
	}
}
