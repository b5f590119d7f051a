package caddyzmq

import (
	"errors"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

// attempt is one try of a call on one pool: the request goes out under a
// fresh connection id, and its exchange meets the reply frames.
type attempt struct {
	*call
	p  *poolRuntime
	t  *transport
	ex *exchange

	// dispatchBy is the deadline by which a worker must start the request
	// (zero: none).
	dispatchBy time.Time

	// session is the request's affinity session, if any; claimed: this
	// request holds the claim to pin it (pinTable.claim).
	session string
	claimed bool
	// undelivered: the request never reached a worker (its REQ could not
	// be routed), so no ACK will come to settle the pin.
	undelivered bool

	// pumpStop and pumped (a streamed body only): stop the pump, and the
	// pump has finished.
	pumpStop, pumped chan struct{}

	// owed: reply bytes written to the client and not yet granted back
	// to the worker as credit (control channel only).
	owed int
	rc   *http.ResponseController
}

// try sends the request to pool p and relays the reply. It returns
// errNoWorker, errQueueFull or errBusy, with nothing written, when the pool
// could not take the request, and other sentinel errors that serve acts on.
func (c *call) try(p *poolRuntime) error {
	c.st.pool = p
	if err := p.acquire(c.r, time.Duration(c.h.QueueTimeout)); err != nil {
		return err
	}
	a := attempt{call: c, p: p, t: p.transport}
	a.ex = a.t.register(int(c.h.MaxBufferedReply), c.retryable())
	defer a.end()
	if err := a.submitRequest(); err != nil {
		return err
	}
	if err := a.sendBody(); err != nil {
		return err
	}
	return a.relay()
}

// end lets go of what the attempt holds, in the reverse order of taking it.
func (a *attempt) end() {
	if a.pumped != nil {
		// The pump reads r.Body: it must be finished before ServeHTTP
		// returns and net/http reuses the request. It does not wait for
		// a stalled client: a Read it is blocked in is interrupted.
		close(a.pumpStop)
		<-a.pumped
	}
	if a.session != "" && !a.undelivered {
		a.settlePin()
	}
	if a.claimed {
		a.t.pins.unclaim(a.session) // no ACK came: let others pin
	}
	if a.t.control != nil {
		a.noteWorker(a.ex)
	}
	a.t.unregister(a.ex)
	a.p.release()
}

// submitRequest hands the request's first message to the workers: addressed to the
// worker its session is pinned to, or pushed to whichever takes it.
func (a *attempt) submitRequest() error {
	h, t, ex := a.h, a.t, a.ex
	// A dispatch deadline lets Caddy re-send, safely, what no worker took:
	// only when every worker of the pool honours it (speaks zmqx/1).
	if t.control != nil && h.DispatchTimeout > 0 && t.control.coversPeers() {
		a.dispatchBy = time.Now().Add(time.Duration(h.DispatchTimeout))
		if a.confirmed() {
			ex.expectConfirm()
		}
	}
	if a.st.lazyBody {
		ex.expectAck("")
		ex.upload = newUploadFlow(h.ReplyWindow)
	}
	buf := a.frame(a.bodyLen(), a.body, false)
	if pinned := a.pin(); pinned != "" {
		ex.addressed = pinned
		t.control.sendRequest(pinned, *buf)
		requestFrames.put(buf)
		return nil
	}
	return t.submit(buf, ex)
}

// confirmed reports whether the request's worker must wait for CONFIRM
// before it runs it (zmqx.HeaderConfirm): it is sent again if no ACK
// arrives by its dispatch deadline, and a lost ACK must not let a method
// that does not tolerate a second run run twice.
func (a *attempt) confirmed() bool {
	return !a.dispatchBy.IsZero() && !isIdempotent(a.r.Method)
}

// bodyLen is the body length the first message announces.
func (a *attempt) bodyLen() int64 {
	switch {
	case a.up != nil && a.up.done:
		return a.up.size
	case a.up != nil, a.st.lazyBody:
		return a.r.ContentLength
	}
	return int64(len(a.body))
}

// frame encodes a request message of the attempt, with body inline;
// uploadDone marks the second message of a spooled body.
func (a *attempt) frame(bodyLen int64, body []byte, uploadDone bool) *[]byte {
	st := a.st
	connID := mongrel2.AppendUint(st.idBuf[:0], a.ex.id)
	a.h.encodeHeaders(&st.enc, a.r, a.path, bodyLen, a.ip, a.p.ControlEndpoint != "", a.dispatchBy, a.up, uploadDone)
	if st.lazyBody {
		st.enc.Add(zmqx.HeaderBody, zmqx.BodyStream)
	}
	if a.confirmed() {
		st.enc.Add(zmqx.HeaderConfirm, zmqx.ConfirmAck)
	}
	a.h.addSessionHeader(&st.enc, a.r, a.t) // sessions.go
	buf := requestFrames.get()
	*buf = mongrel2.AppendRequest(*buf, a.p.sender, string(connID), a.path, st.enc.Bytes(), body)
	return buf
}

// pin returns the live worker the request's session is pinned to, or "".
// Session affinity: a request of a pinned session is addressed to its
// worker while it lives; otherwise it is balanced, and the first worker to
// acknowledge a request of the session gets it pinned (settlePin).
func (a *attempt) pin() string {
	h, t := a.h, a.t
	if h.Affinity == nil || t.control == nil {
		return ""
	}
	session := h.Affinity.sessionKey(a.r)
	if session == "" {
		return ""
	}
	pinned := t.pins.get(session)
	if pinned == "" {
		// Another request of this session may be on its way to being
		// pinned: wait for it a moment rather than balance elsewhere.
		if wait := t.pins.claim(session); wait != nil {
			waitAtMost(pendingWait, wait, a.r.Context().Done())
			pinned = t.pins.get(session)
		} else {
			a.claimed = true
		}
	}
	if pinned != "" && !t.control.isLive(pinned) {
		pinned = ""
	}
	a.session = session
	a.ex.expectAck(session)
	return pinned
}

// settlePin pins the session to the worker that took the request. ACK and
// reply travel on different sockets, and the reply may win: the end of the
// attempt (and so the client's next request) waits a moment for the ACK.
func (a *attempt) settlePin() {
	t, ex := a.t, a.ex
	if ex.workerID() == "" {
		waitAtMost(pendingWait, ex.acked, nil)
	}
	if wk := ex.workerID(); wk != "" {
		t.pins.pinFirst(a.session, wk, t.control.isLive)
	} else {
		t.pins.awaitAck(ex.id, a.session)
	}
}

// waitAtMost waits up to d for a or b (nil: never) to be ready.
func waitAtMost(d time.Duration, a, b <-chan struct{}) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-a:
	case <-b:
	case <-timer.C:
	}
}

// sendBody sends what follows the first message: a streamed body (by a
// pump, as the worker grants credit) or the rest of a spooled one.
func (a *attempt) sendBody() error {
	switch {
	case a.st.lazyBody:
		a.startPump()
	case a.up != nil:
		return a.spoolBody()
	}
	return nil
}

// startPump streams the body to the worker that acknowledges the request.
func (a *attempt) startPump() {
	a.pumpStop, a.pumped = make(chan struct{}), make(chan struct{})
	h, w, r, t, ex, stop, pumped, consumed := a.h, a.w, a.r, a.t, a.ex, a.pumpStop, a.pumped, &a.st.bodyConsumed
	go func() {
		defer close(pumped)
		h.pumpUpload(w, r, t, ex, stop, consumed)
	}()
}

// spoolBody writes the body to the upload file now that the start message is
// out (the handler may answer meanwhile to refuse it), then says it is
// done.
func (a *attempt) spoolBody() error {
	up, ex := a.up, a.ex
	if !up.done {
		chunk := make([]byte, 64<<10)
		stopped, err := up.spool(a.r, a.h.MaxRequestBody, chunk, func() bool { return len(ex.signal) > 0 })
		if err != nil {
			a.t.notifyDisconnect(ex)
			if errors.Is(err, errUploadTooLarge) {
				return a.statusError(http.StatusRequestEntityTooLarge, err)
			}
			return a.statusError(http.StatusBadRequest, err)
		}
		if stopped {
			a.h.logger.Debug("worker answered before the upload was complete", zap.Uint64("conn_id", ex.id))
		}
	}
	if !up.done {
		return nil
	}
	return a.t.submit(a.frame(up.size, nil, true), ex)
}
