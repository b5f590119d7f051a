package caddyzmq

import (
	"errors"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/zmqbridge/caddy-zmq/internal/zmqio"
	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

// uploadFlushAfter is how long bytes the client has sent may wait in Caddy
// for more to fill their BODY message. A fast upload fills a whole message
// well within it and keeps sending big ones; a client that pauses or
// trickles (a log stream, an interactive upload the worker answers piece by
// piece) gets what it sent to the worker after this delay, as
// reverse_proxy would forward it, instead of when a whole message is full
// or the body ends. It is short next to a network round trip, and long
// enough that the watcher wakes rarely.
const uploadFlushAfter = 2 * time.Millisecond

// errPumpStopped: the exchange ended while the body was being sent.
var errPumpStopped = errors.New("the exchange ended during the streamed upload")

// uploadPump sends one streamed upload's body to its worker. Two goroutines
// share it:
//
//   - the reader (run) takes credit, reads the client's body straight into
//     the C memory of a BODY message (zmqio.CBuf, which libzmq sends from
//     and frees) and sends the message when it is full or the body ends:
//     a fast upload goes out in big messages, without a copy;
//   - the watcher (watch) sends what has arrived when the message has
//     waited uploadFlushAfter without filling up. The reader is then most
//     likely blocked in a Read into the rest of that message, and a Read
//     cannot be interrupted and resumed, so the watcher copies the bytes
//     that arrived into a message of their own: only a paused client's
//     bytes are copied, never a fast one's. When the reader's Read returns
//     it moves what is not sent yet into a fresh message (rebase) and goes
//     on filling that one.
//
// The watcher is also the one that ends the pump when the exchange is over
// (done): a reader blocked in a Read of a stalled client is unblocked by
// interrupt, so the end of the exchange, and the pool slot it holds, does
// not wait for the client. Every message is sent under mu, so the worker
// gets the body's bytes in order, and the buffer is never sent or freed by
// one goroutine while the other uses it.
type uploadPump struct {
	body io.Reader
	flow *uploadFlow
	id   uint64 // the exchange's connection id
	// head is the BODY message's head, in front of the chunk.
	head []byte
	// send queues a message for the worker (transport.sendUpload).
	send func(ctlMsg)
	// max is max_request_body (0: none).
	max        int64
	flushAfter time.Duration
	done       <-chan struct{}
	// arrived gets a token when a Read returns: it wakes the watcher.
	arrived chan struct{}

	mu sync.Mutex
	// msg is the message being filled (nil between messages); limit is
	// the credit taken for it, filled how much of it the body filled, and
	// flushed how much of that the watcher has sent (copied) already.
	msg                    *zmqio.CBuf
	limit, filled, flushed int
	finished               uint64 // messages the reader completed
	total                  int64  // body bytes read
	reading, stopped       bool
}

func newUploadPump(body io.Reader, flow *uploadFlow, id uint64, send func(ctlMsg), done <-chan struct{}) *uploadPump {
	return &uploadPump{
		body: body, flow: flow, id: id, head: zmqx.AppendBodyHead(nil, id), send: send, done: done,
		flushAfter: uploadFlushAfter,
		arrived:    make(chan struct{}, 1),
	}
}

// run is the reader: it sends the body, then BODYEND, and returns nil; or
// returns why it stopped early (errPumpStopped, errUploadTooLarge, the
// client's body error). Whatever it read is sent before it returns, except
// when the exchange is over or the body is too large.
func (p *uploadPump) run() error {
	for {
		// Credit first: nothing is read from the client that the worker
		// has no room for.
		c, ok := p.flow.take(streamChunk, p.done)
		if !ok {
			return errPumpStopped
		}
		if err := p.fillMessage(int(c)); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
	}
}

// fillMessage reads the body into a message of up to c bytes and sends it.
// It returns nil when the message is out and the body goes on, io.EOF
// when the body's end is sent too.
func (p *uploadPump) fillMessage(c int) error {
	msg := zmqio.NewCBuf(len(p.head) + c)
	copy(msg.Bytes(), p.head)
	p.mu.Lock()
	p.msg, p.limit, p.filled, p.flushed = msg, c, 0, 0
	for {
		if p.stopped {
			p.dropLocked()
			p.mu.Unlock()
			return errPumpStopped
		}
		// Only the reader moves msg and filled: the slice stays valid
		// outside the lock, and the watcher only reads before filled.
		into := p.msg.Bytes()[len(p.head)+p.filled : len(p.head)+p.limit]
		p.reading = true
		p.mu.Unlock()
		n, err := p.body.Read(into)
		p.mu.Lock()
		p.reading = false
		complete, err := p.arrivedLocked(n, err)
		if complete || err != nil {
			p.mu.Unlock()
			p.wakeWatcher()
			return err
		}
		p.wakeWatcher()
	}
}

func (p *uploadPump) wakeWatcher() {
	select {
	case p.arrived <- struct{}{}:
	default:
	}
}

// arrivedLocked takes in what a Read returned: it reports whether the
// message was completed and sent, and the error that ends the upload
// (io.EOF once BODYEND is sent).
func (p *uploadPump) arrivedLocked(n int, err error) (bool, error) {
	if p.stopped {
		p.dropLocked() // the error may be our own interrupt: not the client's
		return true, errPumpStopped
	}
	if p.max > 0 && p.total+int64(n) > p.max {
		p.dropLocked()
		return true, errUploadTooLarge
	}
	p.total += int64(n)
	p.filled += n
	if p.filled < p.limit && err == nil {
		if p.flushed > 0 {
			p.rebaseLocked()
		}
		return false, nil
	}
	p.finishLocked()
	if err == io.EOF {
		p.send(ctlMsg{payload: zmqx.AppendBodyEnd(nil, p.id)})
	}
	return true, err
}

// finishLocked sends the message: zero-copy if the watcher sent none of it,
// else the rest by copy. Credit the message did not use goes back for the
// next one.
func (p *uploadPump) finishLocked() {
	if unused := p.limit - p.filled; unused > 0 {
		p.flow.grant(int64(unused))
	}
	switch {
	case p.flushed > 0:
		p.flushLocked()
		p.msg.Free()
	case p.filled > 0:
		p.send(ctlMsg{body: p.msg, bodyLen: len(p.head) + p.filled})
	default:
		p.msg.Free()
	}
	p.msg = nil
	p.finished++
}

// flushLocked sends, by copy, what arrived in msg and is not sent yet.
func (p *uploadPump) flushLocked() {
	b := p.msg.Bytes()
	part := zmqio.NewCBuf(len(p.head) + p.filled - p.flushed)
	m := part.Bytes()
	copy(m, p.head)
	copy(m[len(p.head):], b[len(p.head)+p.flushed:len(p.head)+p.filled])
	p.send(ctlMsg{body: part, bodyLen: len(m)})
	p.flushed = p.filled
}

// rebaseLocked moves what the watcher has not sent yet into a fresh
// message, with the credit that is left, so that the reader goes on
// filling it from its start.
func (p *uploadPump) rebaseLocked() {
	rest := p.filled - p.flushed
	next := zmqio.NewCBuf(len(p.head) + p.limit - p.flushed)
	m := next.Bytes()
	copy(m, p.head)
	copy(m[len(p.head):], p.msg.Bytes()[len(p.head)+p.flushed:len(p.head)+p.filled])
	p.msg.Free()
	p.msg, p.limit, p.filled, p.flushed = next, p.limit-p.flushed, rest, 0
}

// dropLocked frees the message without sending the rest of it.
func (p *uploadPump) dropLocked() {
	p.msg.Free()
	p.msg = nil
}

// watch is the watcher: it sends what waits in a message that does not
// fill up within flushAfter, and it stops the reader when the exchange is
// over. It returns once the reader has returned (readerDone), so that
// nothing reads the body after the pump is finished.
func (p *uploadPump) watch(readerDone <-chan struct{}, interrupt func()) {
	timer := time.NewTimer(p.flushAfter)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-p.arrived:
		case <-readerDone:
			return
		case <-p.done:
			p.stop(interrupt, readerDone)
			return
		}
		p.mu.Lock()
		waiting, msgs := p.msg != nil && p.filled > p.flushed, p.finished
		p.mu.Unlock()
		if !waiting {
			continue
		}
		timer.Reset(p.flushAfter)
		select {
		case <-timer.C:
			p.mu.Lock()
			// Sent meanwhile (msgs moved): what waits now arrived later
			// and gets its own flushAfter (the next token re-arms).
			if p.finished == msgs && p.msg != nil && p.filled > p.flushed {
				p.flushLocked()
			}
			p.mu.Unlock()
		case <-readerDone:
			return
		case <-p.done:
			p.stop(interrupt, readerDone)
			return
		}
	}
}

// stop ends the reader: a Read it is blocked in is interrupted (the
// exchange is over, and its client may never send again).
func (p *uploadPump) stop(interrupt func(), readerDone <-chan struct{}) {
	p.mu.Lock()
	p.stopped = true
	reading := p.reading
	p.mu.Unlock()
	if reading {
		interrupt()
	}
	<-readerDone
}

// interruptRead unblocks a Read of r's body: with a read deadline in the
// past (HTTP/1 and HTTP/2), or by closing the body where the response has
// no deadline (HTTP/3, whose body Close cancels the stream's read side).
// An HTTP/1 connection left with half a body is not reused: net/http
// closes it.
func interruptRead(w http.ResponseWriter, r *http.Request) {
	if err := http.NewResponseController(w).SetReadDeadline(time.Now()); err != nil {
		r.Body.Close()
	}
}
