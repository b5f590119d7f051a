package caddyzmq

import (
	"sync"
	"sync/atomic"

	"github.com/zmqbridge/caddy-zmq/internal/zmqio"
)

// replyFrame is one received reply message, in a pooled buffer or, from
// keptFrameMin up, in the memory libzmq received it into. One frame may
// name up to 128 connections (fan-out): each exchange it is queued on
// holds a reference, and the buffer goes back to its pool (or is freed)
// when the last one has written it to its client. A reference that is
// never released (a request that ended early) only means the buffer is
// left to the GC (a kept one to zmqio.Msg's cleanup).
//
// Neither kind makes garbage per big frame: a fresh 256 KiB slice per frame
// would make the GC the largest cost of a download.
type replyFrame struct {
	buf   []byte
	refs  atomic.Int32
	class int8 // index into frameClasses; -1: not pooled
	// msg, when set, holds buf in libzmq's memory (a big frame, received
	// without a copy): the last release frees it.
	msg *zmqio.Msg
}

// frameClasses are the pooled buffer sizes. The receiver reads every frame
// smaller than keptFrameMin into a scratch buffer of the largest class; a
// frame that fits a smaller class is copied into one, so that many small
// queued frames (SSE events held back by a slow client) do not each pin a
// large buffer. Bigger frames are kept where libzmq received them.
var frameClasses = [...]int{512, 4 << 10, 32 << 10, keptFrameMin}

const bigFrameClass = len(frameClasses) - 1

var framePools [len(frameClasses)]sync.Pool

// newFrame returns a frame whose buffer holds n bytes, from the smallest
// class that fits, with one reference.
func newFrame(n int) *replyFrame {
	for c, size := range frameClasses {
		if n <= size {
			return getFrame(c, n)
		}
	}
	f := &replyFrame{buf: make([]byte, n), class: -1}
	f.refs.Store(1)
	return f
}

func getFrame(class, n int) *replyFrame {
	f, _ := framePools[class].Get().(*replyFrame)
	if f == nil {
		f = &replyFrame{buf: make([]byte, frameClasses[class]), class: int8(class)}
	}
	f.buf = f.buf[:n]
	f.refs.Store(1)
	return f
}

// keptFrameMin is the size from which a reply frame stays in the memory
// libzmq received it into instead of being copied to a Go buffer: body
// frames of large responses, where a copy of every byte is a cost worth
// avoiding.
const keptFrameMin = 64 << 10

// keptFrame wraps a part received without a copy. Its memory is freed by
// the last release; if a reference is dropped without one (a request that
// ended early), once the frame is unreachable (zmqio.Msg). Whoever uses buf
// must hold the frame: buf alone, in C memory, keeps nothing alive.
func keptFrame(m *zmqio.Msg) *replyFrame {
	f := &replyFrame{buf: m.Bytes(), class: -1, msg: m}
	f.refs.Store(1)
	return f
}

func (f *replyFrame) retain() { f.refs.Add(1) }

// release drops one reference; the last returns the buffer to its pool, or
// frees a kept one.
func (f *replyFrame) release() {
	if f == nil || f.refs.Add(-1) != 0 {
		return
	}
	if f.msg != nil {
		f.msg.Close()
		return
	}
	if f.class >= 0 {
		framePools[f.class].Put(f)
	}
}

// queuedFrame is a reply body queued on an exchange: body lies in frame's
// buffer.
type queuedFrame struct {
	body  []byte
	frame *replyFrame
}
