package caddyzmq

import (
	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/zmqio"
	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

// A large client message that comes as one frame (what browsers and most
// clients send) is read straight into the request that carries it to the
// worker: the request's head is written first, the payload is read and
// unmasked after it, and the request goes as it is: through the PUSH
// socket, or as a REQ over the control channel to the worker that took the
// handshake, from C memory that libzmq sends without a copy of its own.
// Smaller messages, and fragmented ones (whose size is known only at their
// end), are reassembled and copied into their request (forward), which
// costs little for them.

// wsPlaceMin is the payload size from which a message is placed.
const wsPlaceMin = 64 << 10

// wsPlaced is a request being filled with a client message's payload.
type wsPlaced struct {
	c      *zmqio.CBuf // the request, in C memory
	worker string      // a REQ for this worker, or "" for PUSH
	n      int         // the request's length
}

// place is the session's wsframe.Reader.Place: it writes the head of the
// request for a message of n payload bytes and returns the room for them.
func (s *wsSession) place(flags byte, n int) []byte {
	s.placed.free() // one the reader could not finish
	if n < wsPlaceMin {
		return nil
	}
	var head []byte
	wk := ""
	if s.t.control != nil {
		if wk = s.worker(); wk != "" {
			head = zmqx.AppendReq(head, nil)
		}
	}
	head = mongrel2.AppendRequestHead(head, s.p.sender, s.connID, s.path, s.headers(mongrel2.MethodWebSocket, flags), n)
	total := len(head) + n + 1
	c := zmqio.NewCBuf(total)
	b := c.Bytes()[:total]
	s.placed = wsPlaced{c: c, worker: wk, n: total}
	copy(b, head)
	b[total-1] = ','
	return b[len(head) : len(head)+n]
}

// ready reports whether a placed request waits to be sent (its payload
// was read).
func (p *wsPlaced) ready() bool { return p.n > 0 }

// free releases a placed request that will not be sent.
func (p *wsPlaced) free() {
	p.c.Free()
	*p = wsPlaced{}
}

// forwardPlaced sends the placed request, as forward sends others.
func (s *wsSession) forwardPlaced() error {
	pl := s.placed
	s.placed = wsPlaced{}
	return s.deliver(pl.worker, ctlMsg{worker: pl.worker, body: pl.c, bodyLen: pl.n, req: true},
		outMsg{body: pl.c, bodyLen: pl.n, ex: s.ex})
}
