package caddyzmq

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/zmqbridge/caddy-zmq/module/internal/httpreply"
)

// relay writes the worker's reply to the client as its frames arrive, until
// the reply is complete or the attempt ends: reply timeout (504), stream
// timeout, dispatch deadline, the client leaving, or an error on the
// exchange.
func (a *attempt) relay() error {
	rr := &a.st.rr
	rr.Reset(a.w, a.r.Method == http.MethodHead)
	timer := startTimer(&a.st.timer, time.Until(a.replyBy))
	defer timer.Stop()
	var dispatchC <-chan time.Time
	if !a.dispatchBy.IsZero() {
		dt := startTimer(&a.st.dispatchTimer, time.Until(a.dispatchBy)+dispatchGrace)
		defer dt.Stop()
		dispatchC = dt.C
	}
	gotFrames := false
	for {
		select {
		case <-a.ex.signal:
		case <-dispatchC:
			if !gotFrames && a.ex.giveUpDispatch() {
				return errNotTaken
			}
			continue
		case <-timer.C:
			return a.timedOut()
		case <-a.r.Context().Done():
			return a.clientLeft(a.r.Context().Err())
		}

		frames, xerr := a.ex.take(a.st.frames[:0])
		a.st.frames = frames
		if !gotFrames && len(frames) > 0 {
			a.p.metrics().observeFirstByte(a.replyBy.Add(-time.Duration(a.h.ReplyTimeout)))
		}
		gotFrames = gotFrames || len(frames) > 0
		if done, err := a.write(frames); done || err != nil {
			return err
		}
		if xerr != nil {
			return a.ended(xerr)
		}
		if rr.HeadDone() {
			// The response is streaming: the client sees each frame as it
			// arrives (Server-Sent Events, long polls).
			if err := a.flush(); err != nil {
				return err
			}
			if a.h.StreamTimeout > 0 {
				timer.Reset(time.Duration(a.h.StreamTimeout))
			} else {
				timer.Stop()
			}
		}
	}
}

// write feeds reply frames to the client, and reports whether the reply is
// complete.
func (a *attempt) write(frames []queuedFrame) (bool, error) {
	rr := &a.st.rr
	if len(frames) > 0 && !rr.HeadDone() && a.t.control != nil {
		a.noteWorker(a.ex) // before the head goes out, for header placeholders
	}
	for i, qf := range frames {
		a.owed += len(qf.body)
		err := rr.Feed(qf.body)
		qf.frame.release() // Feed keeps nothing of it
		frames[i].frame = nil
		if err != nil {
			var ce httpreply.ClientError
			if errors.As(err, &ce) {
				return false, a.clientLeft(err)
			}
			err = fmt.Errorf("bad reply from a worker of pool %s: %w", a.p.Name, err)
			if rr.HeadDone() {
				return false, a.abort(zapcore.ErrorLevel, err)
			}
			a.t.notifyDisconnect(a.ex)
			return false, a.statusError(http.StatusBadGateway, err)
		}
		if rr.Done() {
			return true, nil
		}
	}
	return false, nil
}

// flush sends what was written on to the client and grants the worker
// credit for it.
func (a *attempt) flush() error {
	if a.rc == nil {
		a.rc = http.NewResponseController(a.w)
	}
	if err := a.rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return a.clientLeft(err)
	}
	if a.t.control != nil && a.owed >= int(a.h.ReplyWindow/4) {
		if wk := a.ex.workerID(); wk != "" {
			a.t.control.credit(wk, a.ex.id, a.owed)
			a.owed = 0
		}
	}
	return nil
}

// ended acts on the error that ended the exchange before the reply was
// complete: sentinel errors for serve to act on, or the client's status.
func (a *attempt) ended(err error) error {
	switch {
	case a.st.rr.HeadDone():
		return a.abort(zapcore.ErrorLevel, err)
	case errors.Is(err, errAddresseeGone):
		a.t.pins.forget(a.session)
		a.undelivered = true
		return err // serve sends it again, balanced
	case errors.Is(err, errReqNotQueued):
		a.undelivered = true // the pin stays: its worker is alive
		return err           // serve tries another pool, or answers 503
	case errors.Is(err, errNoWorker), errors.Is(err, errWorkerLost):
		return err // serve tries another pool, or retries
	case errors.Is(err, errNotTaken):
		return err // handed back (NACK): serve re-sends it
	case errors.Is(err, errWorkerHung):
		a.t.notifyDisconnect(a.ex) // its handler must not run it too
		return err
	case errors.Is(err, errUploadTooLarge):
		// The pump told the worker (BODYERR) before it failed the
		// exchange; this ends the handler, should it ignore that.
		a.t.notifyDisconnect(a.ex)
		return a.statusError(http.StatusRequestEntityTooLarge, err)
	case errors.Is(err, errStopped):
		return a.statusError(http.StatusServiceUnavailable, err)
	}
	a.t.notifyDisconnect(a.ex)
	return a.statusError(http.StatusBadGateway, fmt.Errorf("pool %s: %w", a.p.Name, err))
}

// timedOut ends an attempt whose reply did not start within reply_timeout
// (504), or whose stream paused longer than stream_timeout.
func (a *attempt) timedOut() error {
	if a.st.rr.HeadDone() {
		return a.abort(zapcore.ErrorLevel, fmt.Errorf("no reply frame within stream_timeout %s", time.Duration(a.h.StreamTimeout)))
	}
	a.t.notifyDisconnect(a.ex)
	return a.statusError(http.StatusGatewayTimeout,
		fmt.Errorf("no reply from a worker of pool %s within reply_timeout %s", a.p.Name, time.Duration(a.h.ReplyTimeout)))
}

// clientLeft ends an attempt whose client went away: 499 before the reply
// started, as with reverse_proxy; a started response is cut off.
func (a *attempt) clientLeft(err error) error {
	if a.st.rr.HeadDone() {
		return a.abort(zapcore.DebugLevel, fmt.Errorf("client went away: %w", err))
	}
	a.t.notifyDisconnect(a.ex)
	return a.statusError(statusClientClosed, fmt.Errorf("client went away before the reply: %w", err))
}

// abort ends a response that has already started: the client must not take
// a truncated body for a complete one, so the connection (or HTTP/2 stream)
// is reset, as reverse_proxy does. It does not return; the error result
// lets callers say so.
func (a *attempt) abort(lvl zapcore.Level, err error) error {
	a.t.notifyDisconnect(a.ex)
	if ce := a.h.logger.Check(lvl, "aborting with incomplete response"); ce != nil {
		ce.Write(
			zap.String("method", a.r.Method),
			zap.String("uri", a.r.RequestURI),
			zap.String("pool", a.p.Name),
			zap.Uint64("conn_id", a.ex.id),
			zap.Error(err))
	}
	_ = http.NewResponseController(a.w).Flush()
	panic(http.ErrAbortHandler)
}
