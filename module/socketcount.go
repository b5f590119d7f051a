package caddyzmq

import "sync"

// socketCount counts open WebSockets. Unlike a sync.WaitGroup, sockets may
// open while someone waits for the count to reach zero (a client upgrading
// while Caddy shuts down), and a waiter that gives up leaves nothing behind.
type socketCount struct {
	mu      sync.Mutex
	n       int
	waiters []chan struct{}
}

func (c *socketCount) add() {
	c.mu.Lock()
	c.n++
	c.mu.Unlock()
}

func (c *socketCount) done() {
	c.mu.Lock()
	c.n--
	if c.n == 0 {
		for _, w := range c.waiters {
			close(w)
		}
		c.waiters = nil
	}
	c.mu.Unlock()
}

// zero returns a channel closed once no socket is open.
func (c *socketCount) zero() <-chan struct{} {
	ch := make(chan struct{})
	c.mu.Lock()
	if c.n == 0 {
		close(ch)
	} else {
		c.waiters = append(c.waiters, ch)
	}
	c.mu.Unlock()
	return ch
}
