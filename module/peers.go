package caddyzmq

import (
	"time"

	zmq "github.com/pebbe/zmq4"
)

// monitoredEvents are the request socket's events that peerCounter counts.
const monitoredEvents = zmq.EVENT_ACCEPTED | zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED |
	zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL |
	zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH

// handshakeIvl bounds the ZMTP handshake of every connection of the
// module's sockets (ZMQ_HANDSHAKE_IVL): libzmq drops a connection still in
// its handshake after it. Why not libzmq's default (30 s): a connection to
// the request socket counts as a possible plain Mongrel2 handler until its
// handshake ends (peerCounter), which keeps dispatch deadlines off for the
// pool (coversPeers), so a peer that connects and never greets turned safe
// re-sends off for half a minute per connection; and a worker whose key is
// answered "not yet" (zap.go) waits out this interval before it dials
// again, so a key allowed by reload gets in sooner. Why not shorter: a
// CURVE handshake takes three round trips (greetings, HELLO and WELCOME,
// INITIATE and READY) plus the ZAP answer, about a second between
// continents; this leaves room for a few TCP retransmissions on such a
// link.
const handshakeIvl = 5 * time.Second

// handshakeSettle is handshakeIvl plus a margin: a connection older than
// that has ended its handshake, or libzmq has dropped it.
const handshakeSettle = handshakeIvl + time.Second

// peerCounter turns a request socket's monitor events into two counts.
//
// conns counts connections exactly (ACCEPTED or CONNECTED, then
// DISCONNECTED): a connection still in its handshake is a worker that will
// take requests, which coversPeers must not overlook.
//
// ready counts the connections that can take a request now. libzmq attaches
// a bound socket's pipe to a peer only once the ZMTP handshake has ended,
// and a send before that fails with EAGAIN: counted on accept, a pool looked
// live and answered 503. libzmq emits one of HANDSHAKE_SUCCEEDED or
// HANDSHAKE_FAILED_* per connection before its DISCONNECTED, so +1 on either
// outcome and -1 on DISCONNECTED counts handshaken connections (a failed one
// for the moment before its disconnect). Not quite always: a few protocol
// errors (a peer announcing a huge frame during the handshake, an ERROR
// command with an unknown reason, a bad frame from a ZMTP 1.0/2.0 peer) end a
// connection with no outcome event, which would leave ready one too low for
// good. So ready is kept within [0, conns], and once no connection has
// arrived for handshakeSettle every connection is taken as ready. ZMTP
// 1.0/2.0 peers (libzmq 2 and 3) get no outcome event at all and are never
// counted as ready; libzmq 4.3.4 also drops them every handshake interval.
//
// failed counts the connections whose handshake failed and that have not
// disconnected yet, which takers leaves out. Most disconnect at once, but a
// worker whose CURVE key is refused "for now" (ZAP 300, see zap.go) keeps
// its connection open and silent until libzmq's handshake timeout, then
// dials again: counted among conns, it would turn dispatch deadlines off
// for the whole pool (coversPeers) while it retries, an unauthenticated
// peer disabling safe re-sends. Outcome events carry no descriptor, so a
// DISCONNECTED cannot tell whether the failed connection left; it takes
// one off failed anyway. That can only make failed too low (a failed
// connection counted among takers until it leaves: the safe side), never
// too high, as libzmq emits at most one outcome per connection: a
// connection still in its handshake is never left out, so a plain handler
// attaching between coversPeers and a send is still counted.
type peerCounter struct {
	conns, ready, failed int64
	lastConn             time.Time
}

func (c *peerCounter) event(ev zmq.Event, now time.Time) {
	switch ev {
	case zmq.EVENT_ACCEPTED, zmq.EVENT_CONNECTED:
		c.conns++
		c.lastConn = now
	case zmq.EVENT_DISCONNECTED:
		c.conns--
		c.ready--
		c.failed--
	case zmq.EVENT_HANDSHAKE_SUCCEEDED:
		c.ready++
	case zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
		zmq.EVENT_HANDSHAKE_FAILED_AUTH:
		c.ready++
		c.failed++
	}
	c.conns = max(c.conns, 0)
	c.ready = min(max(c.ready, 0), c.conns)
	c.failed = min(max(c.failed, 0), c.conns)
}

// takers is how many connections take requests now or will once their
// handshake ends: conns without those whose handshake failed.
func (c *peerCounter) takers() int64 {
	return c.conns - c.failed
}

// settle marks every connection ready once none arrived for
// handshakeSettle; see peerCounter.
func (c *peerCounter) settle(now time.Time) {
	if c.ready < c.conns && now.Sub(c.lastConn) > handshakeSettle {
		c.ready = c.conns
	}
}
