package caddyzmq

import (
	"errors"
	"testing"
	"time"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/zmqio"
	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

// A REQ that a large WebSocket message was read into lies in C memory;
// when it cannot be sent, its exchange fails as for any REQ (the
// connection id is read from the C bytes) and the memory is released.
func TestUndeliverablePlacedReq(t *testing.T) {
	tr := &transport{pending: map[uint64]*exchange{}, pins: newPinTable(time.Hour)}
	c := newControlPlane(tr, "")
	ex := tr.register(0, false)
	connID := string(mongrel2.AppendUint(nil, ex.id))
	head := mongrel2.AppendRequestHead(zmqx.AppendReq(nil, nil), "sender", connID, "/ws", []byte(`{"METHOD":"WEBSOCKET"}`), 3)
	req := append(head, "abc,"...)
	buf := zmqio.NewCBuf(len(req))
	copy(buf.Bytes(), req)
	mapped, cached := zmqio.CBufStats()

	c.undeliverable(ctlMsg{worker: "wk", body: buf, bodyLen: len(req), req: true}, errAddresseeGone)

	if _, err := ex.take(nil); !errors.Is(err, errAddresseeGone) {
		t.Fatalf("exchange error %v, want errAddresseeGone", err)
	}
	// Released: back in the block cache, or unmapped if that was full.
	m, ca := zmqio.CBufStats()
	if (m != mapped || ca != cached+1) && (m != mapped-1 || ca != cached) {
		t.Fatalf("CBufStats %d mapped, %d cached after the drop; before %d, %d", m, ca, mapped, cached)
	}
}
