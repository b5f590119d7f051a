package caddyzmq

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/zmqbridge/caddy-zmq/internal/zmqio"
	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

// TestUploadChunkLostEndsInBodyErr: a BODY chunk that libzmq refuses (the
// worker's queue is full) fails the exchange, the chunks after it are
// dropped, and the body's end reaches the worker as BODYERR, never BODYEND:
// a worker must not take a truncated body for a complete one.
func TestUploadChunkLostEndsInBodyErr(t *testing.T) {
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
	// The route exists once the dealer's first message has arrived.
	dealer.SendBytes(zmqx.AppendHeartbeat(nil), 0)
	if _, err := router.RecvMessageBytes(0); err != nil {
		t.Fatal(err)
	}

	c := &controlPlane{}
	ex := newExchange(7, 1<<20)
	ex.upload = newUploadFlow(1 << 20)
	chunk := func() ctlMsg {
		head := zmqx.AppendBodyHead(nil, ex.id)
		b := zmqio.NewCBuf(len(head) + 4096)
		copy(b.Bytes(), head)
		return ctlMsg{worker: "wk", upload: ex, body: b, bodyLen: len(head) + 4096}
	}
	// The dealer reads nothing: the queue fills and a chunk is refused.
	sent := 0
	for deadline := time.Now().Add(10 * time.Second); !ex.upload.lost.Load(); sent++ {
		if time.Now().After(deadline) {
			t.Fatalf("no chunk refused after %d sends", sent)
		}
		c.deliver(router, chunk())
	}
	if _, err := ex.take(nil); !errors.Is(err, errUploadLost) {
		t.Fatalf("exchange error = %v, want errUploadLost", err)
	}
	// A chunk after the loss, marked so the worker side can tell it apart.
	late := chunk()
	data := late.body.Bytes()[len(zmqx.AppendBodyHead(nil, ex.id)):late.bodyLen]
	for i := range data {
		data[i] = 'X'
	}
	c.deliver(router, late) // dropped: the body already has a gap
	// The worker reads again: what was queued before the loss (until
	// nothing more comes), then the end.
	next := func(timeout time.Duration) (zmqx.Message, []byte, error) {
		dealer.SetRcvtimeo(timeout)
		msg, err := dealer.RecvBytes(0)
		if err != nil {
			return zmqx.Message{}, nil, err
		}
		m, err := zmqx.Parse(msg)
		if err != nil {
			t.Fatalf("worker got %q: %v", msg, err)
		}
		if m.Verb == zmqx.Body && len(m.Data) > 0 && m.Data[0] == 'X' {
			t.Fatal("a chunk sent after the lost one reached the worker")
		}
		return m, msg, nil
	}
	for {
		if _, _, err := next(time.Second); err != nil {
			break
		}
	}
	c.deliver(router, ctlMsg{worker: "wk", upload: ex, payload: zmqx.AppendBodyEnd(nil, ex.id)})
	_, end, err := next(10 * time.Second)
	if err != nil {
		t.Fatalf("the body's end never reached the worker: %v", err)
	}
	if m, err := zmqx.Parse(end); err != nil || m.Verb != zmqx.BodyErr {
		t.Fatalf("worker got %q after the lost chunk, want BODYERR", end)
	}
}
