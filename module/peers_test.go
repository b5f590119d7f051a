package caddyzmq

import (
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"
)

func TestPeerCounter(t *testing.T) {
	const (
		acc  = zmq.EVENT_ACCEPTED
		con  = zmq.EVENT_CONNECTED
		ok   = zmq.EVENT_HANDSHAKE_SUCCEEDED
		fail = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
		prot = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
		auth = zmq.EVENT_HANDSHAKE_FAILED_AUTH
		gone = zmq.EVENT_DISCONNECTED
	)
	for _, tc := range []struct {
		name         string
		events       []zmq.Event
		conns, ready int64
		settledReady int64 // after handshakeSettle with no new connection
		takers       int64
	}{
		{"accepted, in its handshake", []zmq.Event{acc}, 1, 0, 1, 1},
		{"handshake done", []zmq.Event{acc, ok}, 1, 1, 1, 1},
		{"connect mode, reconnected", []zmq.Event{con, ok, gone, con, ok}, 1, 1, 1, 1},
		{"two, one still in its handshake", []zmq.Event{acc, acc, ok}, 2, 1, 2, 2},
		{"left", []zmq.Event{acc, ok, gone}, 0, 0, 0, 0},
		{"handshake timed out", []zmq.Event{acc, fail, gone}, 0, 0, 0, 0},
		{"protocol error in the handshake", []zmq.Event{acc, ok, acc, prot, gone}, 1, 1, 1, 1},
		{"unknown CURVE key", []zmq.Event{acc, auth, gone}, 0, 0, 0, 0},
		// A protocol error with no outcome event: ready would stay one too
		// low; it is wrong until the connections settle.
		{"protocol error, no outcome event", []zmq.Event{acc, ok, acc, gone}, 1, 0, 1, 1},
		{"never below zero", []zmq.Event{acc, gone, gone}, 0, 0, 0, 0},
		{"failure counted before its disconnect, never above conns", []zmq.Event{acc, ok, ok}, 1, 1, 1, 1},
		// A key refused "for now" (ZAP 300) leaves its connection open
		// until the handshake times out: no taker, while a worker beside
		// it, in its handshake or done, is one.
		{"unknown CURVE key, connection left open", []zmq.Event{acc, auth}, 1, 1, 1, 0},
		{"refused key beside a worker", []zmq.Event{acc, ok, acc, auth}, 2, 2, 2, 1},
		{"refused key beside a worker in its handshake", []zmq.Event{acc, auth, acc}, 2, 1, 2, 1},
		// Another connection's disconnect takes the failure off: the
		// refused one counts again (the safe side), and leaves none behind.
		{"refused key, another left", []zmq.Event{acc, ok, acc, auth, gone}, 1, 1, 1, 1},
		{"refused key, another left, then it", []zmq.Event{acc, ok, acc, auth, gone, gone}, 0, 0, 0, 0},
		{"failures never above conns", []zmq.Event{acc, auth, auth, prot}, 1, 1, 1, 0},
		{"refused key retrying", []zmq.Event{acc, ok, acc, auth, gone, acc, auth, gone, acc, auth}, 2, 2, 2, 1},
	} {
		var c peerCounter
		now := time.Unix(1000, 0)
		for _, ev := range tc.events {
			c.event(ev, now)
			now = now.Add(time.Millisecond)
		}
		c.settle(now)
		if c.conns != tc.conns || c.ready != tc.ready {
			t.Errorf("%s: conns %d ready %d, want %d %d", tc.name, c.conns, c.ready, tc.conns, tc.ready)
		}
		if c.takers() != tc.takers {
			t.Errorf("%s: takers %d, want %d", tc.name, c.takers(), tc.takers)
		}
		c.settle(now.Add(handshakeSettle + time.Second))
		if c.ready != tc.settledReady {
			t.Errorf("%s: settled ready %d, want %d", tc.name, c.ready, tc.settledReady)
		}
	}
}
