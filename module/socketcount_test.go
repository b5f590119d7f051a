package caddyzmq

import "testing"

func TestSocketCount(t *testing.T) {
	closed := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	var c socketCount
	if !closed(c.zero()) {
		t.Fatal("no socket open: zero must be closed at once")
	}
	c.add()
	c.add()
	w := c.zero()
	if closed(w) {
		t.Fatal("two sockets open: zero closed")
	}
	c.add() // a socket opening while someone waits
	c.done()
	c.done()
	if closed(w) {
		t.Fatal("one socket still open: zero closed")
	}
	c.done()
	if !closed(w) {
		t.Fatal("all sockets closed: zero still open")
	}
	if len(c.waiters) != 0 {
		t.Fatalf("%d waiters kept after zero", len(c.waiters))
	}
}
