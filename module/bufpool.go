package caddyzmq

import "sync"

// bytePool recycles byte buffers of about one size. A buffer that grew
// past maxCap is left to the GC, so that one huge message does not pin its
// buffer in the pool.
type bytePool struct {
	pool   sync.Pool
	newCap int
	maxCap int
}

func (p *bytePool) get() *[]byte {
	if b, ok := p.pool.Get().(*[]byte); ok {
		*b = (*b)[:0]
		return b
	}
	b := make([]byte, 0, p.newCap)
	return &b
}

// put returns b to the pool; nil is ignored.
func (p *bytePool) put(b *[]byte) {
	if b != nil && cap(*b) <= p.maxCap {
		p.pool.Put(b)
	}
}

// requestFrames: request frames, built by the request goroutine and
// released by the send owner once libzmq has copied them. (The BODY
// messages of streamed uploads are built in C memory instead, which libzmq
// sends without a copy: zmqio.CBuf.)
var requestFrames = &bytePool{newCap: 2048, maxCap: 256 << 10}
