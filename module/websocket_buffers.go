package caddyzmq

import "sync"

// wsMessageBuffers lends the reassembly buffers of large client messages
// (wsframe.Reader.Buffers): a message is copied into its request to the
// worker at once, so its buffer can serve the next large message of any
// socket instead of being a fresh allocation for the garbage collector
// each time. Buffers larger than wsPooledMax are left to the collector,
// and sync.Pool drops idle ones across collections, so nothing large is
// pinned for long.
type wsMessageBuffers struct{ pool sync.Pool }

const wsPooledMax = 4 << 20

var wsBuffers = &wsMessageBuffers{}

func (b *wsMessageBuffers) Get(n int) []byte {
	if p, ok := b.pool.Get().(*[]byte); ok {
		if cap(*p) >= n {
			return (*p)[:0]
		}
		b.pool.Put(p) // too small for this one, right for another
	}
	return make([]byte, 0, n)
}

func (b *wsMessageBuffers) Put(buf []byte) {
	if cap(buf) <= wsPooledMax {
		b.pool.Put(&buf)
	}
}
