package workerkit

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/zmqio"
	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

const (
	// maxDeadline keeps deadline arithmetic (in microseconds) far from
	// overflow; later deadlines are nonsense.
	maxDeadline = 1 << 50
)

// admit parses a request frame and registers the request, on the goroutine
// that received it and in arrival order, so that a disconnect (the Mongrel2
// notice on the same socket, or DISCONNECT on the control channel) always
// finds the request it follows, even one still waiting for a handler slot.
// It handles the frames that are not requests to run (notices, unsupported
// or malformed messages) and returns nil for them. It takes no slot.
func (s *server) admit(fe *frontEndConn, msg []byte) *flight {
	if s.deliverSeen(fe, msg, nil) { // websocket.go
		return nil
	}
	req, err := mongrel2.ParseRequest(msg)
	if err != nil {
		fe.log.Warn("dropping malformed request frame", "err", err, "len", len(msg), "start", printable(msg, 64))
		return nil
	}
	// One pass for the front end's keys; the last field of a name wins, as
	// in Request.Header. Clients cannot send these upper-case names.
	var method, window, deadline, body, length, confirm string
	for i := range req.Headers {
		switch h := &req.Headers[i]; h.Name {
		case "METHOD":
			method = h.Value()
		case zmqx.HeaderWindow:
			window = h.Value()
		case zmqx.HeaderDeadline:
			deadline = h.Value()
		case zmqx.HeaderBody:
			body = h.Value()
		case zmqx.HeaderConfirm:
			confirm = h.Value()
		case "content-length":
			length = h.Value()
		}
	}
	switch method {
	case "JSON":
		if req.IsDisconnect() {
			s.cancelFlights(flightKey{fe, req.ConnID}, req.Sender)
		} else {
			fe.log.Info("ignoring JSON message", "conn", req.ConnID, "body", printable(req.Body, 200))
		}
		return nil
	case mongrel2.MethodWebSocket:
		s.deliverWebSocket(fe, req, msg) // websocket.go
		return nil
	case "XML":
		fe.log.Info("ignoring unsupported message", "method", method, "conn", req.ConnID)
		return nil
	}
	ctx, cancel := context.WithCancel(s.base)
	fl := &flight{key: flightKey{fe, req.ConnID}, sender: req.Sender, cancel: cancel, req: req,
		stream: body == zmqx.BodyStream, wantConfirm: confirm == zmqx.ConfirmAck}
	fl.ctx, fl.base = ctx, ctx
	if fe.ctl != nil {
		fl.leaseCtx = flightCtx{Context: ctx, fl: fl} // no allocation of its own
		fl.ctx = &fl.leaseCtx
	}
	if fl.stream {
		// The inline body is empty; content-length is the streamed body's
		// (absent for a chunked upload).
		fl.length = -1
		if n, err := strconv.ParseInt(strings.TrimSpace(length), 10, 64); err == nil && n >= 0 {
			fl.length = n
		}
	} else if body != "" {
		fe.log.Warn("ignoring unknown "+zmqx.HeaderBody+" header", "value", body, "conn", req.ConnID)
	}
	if window != "" && fe.ctl != nil {
		if n, ok := zmqx.ParseWindow(window); ok {
			fl.window = n
		} else {
			fe.log.Warn("ignoring invalid "+zmqx.HeaderWindow+" header", "value", window, "conn", req.ConnID)
		}
	}
	if deadline != "" {
		if n, ok := zmqx.ParseDeadline(deadline); ok && n < maxDeadline {
			fl.deadline = n
		} else {
			fe.log.Warn("ignoring invalid "+zmqx.HeaderDeadline+" header", "value", deadline, "conn", req.ConnID)
		}
	}
	// What may ever run inline (inline.go), decided once, from the fields
	// parsed above.
	fl.inlineOK = inlineCandidate(s.noInline, fl.window, fl.stream, method)
	s.mu.Lock()
	fl.next = s.inflight[fl.key]
	s.inflight[fl.key] = fl
	s.mu.Unlock()
	return fl
}

type slotResult int

const (
	slotTaken slotResult = iota
	slotPaused
	slotStopped
)

// takeSlotUnlessPaused is takeSlot for the request socket's owner, which
// also gives up when its front end pauses it: a paused worker keeps reading
// its requests (a pipe left full stalls libzmq's engine, and its heartbeats
// with it) and hands each back with NACK.
func (s *server) takeSlotUnlessPaused(fl *flight) slotResult {
	select {
	case s.sem <- struct{}{}:
		return slotTaken
	default:
	}
	if testHookSlotWait != nil {
		testHookSlotWait(fl.key.connID)
	}
	fe := fl.key.fe
	for {
		select {
		case s.sem <- struct{}{}:
			return slotTaken
		case <-s.stop:
			return slotStopped
		case <-fe.kick:
			if fe.paused.Load() {
				return slotPaused
			}
		}
	}
}

// testHookSlotWait, when set by tests, is called when an admitted request
// has to wait for a handler slot.
var testHookSlotWait func(connID string)

// takeSlot takes a handler slot for fl, waiting while all are busy; false if
// abort is closed first.
func (s *server) takeSlot(fl *flight, abort <-chan struct{}) bool {
	select {
	case s.sem <- struct{}{}:
		return true
	default:
	}
	if testHookSlotWait != nil {
		testHookSlotWait(fl.key.connID)
	}
	select {
	case s.sem <- struct{}{}:
		return true
	case <-abort:
		return false
	}
}

// start runs an admitted request, on a handler goroutine, on the handler
// slot the caller took.
func (s *server) start(fl *flight) {
	if !s.prepare(fl) {
		return
	}
	if s.sessions != nil && s.sessions.route(fl) {
		return
	}
	s.run(fl)
}

// prepare readies an admitted request to run on the handler slot the caller
// took: the moment it would start is the moment to check that it still may.
// If not, it drops the request silently (no ACK, no reply), gives the slot
// back and returns false.
func (s *server) prepare(fl *flight) bool {
	fe := fl.key.fe
	if fl.ctx.Err() != nil {
		// Its client went away (DISCONNECT) while it waited for a slot, or
		// the worker is being shut down hard.
		fe.log.Debug("dropping a request whose client went away before it started", "conn", fl.key.connID)
		s.drop(fl)
		return false
	}
	if fl.deadline != 0 {
		// The front end re-sends a request that nobody acknowledged by its
		// deadline: starting it now could run it twice.
		if late := time.Now().UnixMicro() - fl.deadline*1000; late > 0 {
			s.droppedLate.Add(1)
			fe.log.Debug("dropping a request past its dispatch deadline", "conn", fl.key.connID,
				"late", time.Duration(late)*time.Microsecond)
			s.drop(fl)
			return false
		}
	}
	if fl.window > 0 {
		// A connection not answered yet holds the ACK until it is (or
		// cancels the request if that comes too late).
		if fe.ctl.connected.Load() || fe.ctl.greeting.Load() {
			f := newFlow(fl.window)
			f.stalls = &s.creditStalls
			var u *upload
			if fl.stream {
				// The front end starts sending the body once it has our
				// ACK, with the window as its first credit.
				u = newUpload(fe.ctl, fl.key.connID, fl.ctx, fl.window, fl.length)
			}
			s.mu.Lock()
			fl.flow = f // CREDIT and a lost control connection find it now
			fl.upload = u
			if fl.wantConfirm {
				fl.confirmed = make(chan struct{}) // CONFIRM finds it (confirm.go)
			}
			s.mu.Unlock()
			fl.ackState.Store(ackQueued)
			// Queued, not waited for: the handler starts at once (see
			// ack), unless it must wait for CONFIRM (serveFlight).
			fe.ctl.ack(fl)
		} else if fl.deadline != 0 {
			// No control connection, so no ACK: the front end will re-send
			// this request after its deadline, and we must not run it too.
			s.droppedUnacked.Add(1)
			fe.ctl.warnUnacked()
			fe.log.Debug("dropping a request that cannot be acknowledged (control channel down)", "conn", fl.key.connID)
			s.drop(fl)
			return false
		}
		// Otherwise serve it without ACK and flow control, as a worker
		// without control channel would.
	}
	s.handlers.Add(1)
	s.running.Add(1)
	return true
}

// admitKept is admit for a part left in libzmq's memory (a large one): a
// WebSocket message keeps it there, for WSConn.NextReader to read from;
// anything else gets a copy of its own first, as smaller parts do.
func (s *server) admitKept(fe *frontEndConn, kept *zmqio.Msg) *flight {
	if s.deliverSeen(fe, kept.Bytes(), kept) {
		return nil
	}
	msg := bytes.Clone(kept.Bytes())
	kept.Close()
	return s.admit(fe, msg)
}
