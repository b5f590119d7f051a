package conformance

import (
	"context"
	"fmt"
	"time"

	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

// session is the state the cases share: what the kit learned of the worker.
type session struct {
	ctx context.Context
	cfg Config
	fe  *frontEnd

	worker      string // control identity, "" until heard
	maxConc     int
	controlDone bool // the kit has looked for a control channel
	plainID     string
	live        []*exchange // requests of the current case, cleaned up after it
}

func (s *session) logf(format string, args ...any) {
	if s.cfg.Logf != nil {
		s.cfg.Logf(format, args...)
	}
}

// controlKnown looks for a control channel once (after the worker has
// answered on the Mongrel2 sockets, or straight away if those cases were not
// run), and reports whether the worker has one.
func (s *session) controlKnown() bool {
	if !s.controlDone {
		s.controlDone = true
		wait := s.cfg.ControlWait
		if s.plainID == "" {
			wait = s.cfg.Timeout // nothing proved the worker is up yet
		}
		s.fe.await(s.ctx, wait, func() bool { return len(s.fe.ctl) > 0 })
		s.fe.mu.Lock()
		if len(s.fe.ctl) > 0 {
			s.worker = s.fe.ctl[0].worker
			for _, ev := range s.fe.ctl {
				if ev.worker == s.worker && ev.msg.Verb == zmqx.Hello && ev.err == nil {
					s.maxConc = int(ev.msg.N)
					break
				}
			}
		}
		s.fe.mu.Unlock()
	}
	return s.worker != ""
}

// send sends a request of the current case.
func (s *session) send(r requestSpec) (*exchange, error) {
	x, err := s.fe.send(r, s.cfg.Timeout)
	if x != nil {
		s.live = append(s.live, x)
	}
	return x, err
}

// cleanup ends what the case left running: disconnects and forgets its
// requests, so that the next case starts with the worker's slots free (or
// freeing).
func (s *session) cleanup() {
	for _, x := range s.live {
		s.fe.mu.Lock()
		done := x.complete
		s.fe.mu.Unlock()
		if !done {
			s.fe.disconnect(s.worker, x)
		}
		s.fe.forget(x)
	}
	s.live = s.live[:0]
}

// ctlFor reports whether the worker sent verb naming x.
func (s *session) ctlFor(verb zmqx.Verb, x *exchange) bool {
	for _, ev := range s.fe.ctl {
		if ev.msg.Verb == verb && ev.worker == s.worker && hasID(ev.msg.IDs, x.id) {
			return true
		}
	}
	return false
}

// helloSince reports whether the worker said HELLO after t; under fe.mu.
func (s *session) helloSince(t time.Time) bool {
	for _, ev := range s.fe.ctl {
		if ev.msg.Verb == zmqx.Hello && ev.worker == s.worker && ev.at.After(t) {
			return true
		}
	}
	return false
}

// acked, nacked: under fe.mu.
func (s *session) acked(x *exchange) bool  { return s.ctlFor(zmqx.Ack, x) }
func (s *session) nacked(x *exchange) bool { return s.ctlFor(zmqx.Nack, x) }

// awaitDone waits for x's whole response.
func (s *session) awaitDone(x *exchange) error {
	if !s.fe.await(s.ctx, s.cfg.Timeout, func() bool { return x.complete || x.parseErr != nil }) {
		s.fe.mu.Lock()
		defer s.fe.mu.Unlock()
		return fmt.Errorf("no complete response to %s within %s (%d reply bytes in %d frames)", x.id, s.cfg.Timeout, len(x.reply), len(x.frames))
	}
	s.fe.mu.Lock()
	defer s.fe.mu.Unlock()
	if x.parseErr != nil {
		return fmt.Errorf("the reply to %s is not a valid HTTP/1.x response: %v", x.id, x.parseErr)
	}
	return nil
}

// awaitAcked waits for the ACK of x.
func (s *session) awaitAcked(x *exchange) bool {
	return s.fe.await(s.ctx, s.cfg.Timeout, func() bool { return s.acked(x) })
}

// strays returns how many unmatched reply frames arrived so far.
func (s *session) strays() int {
	s.fe.mu.Lock()
	defer s.fe.mu.Unlock()
	return len(s.fe.stray)
}

func (s *session) strayFrom(n int) string {
	s.fe.mu.Lock()
	defer s.fe.mu.Unlock()
	if len(s.fe.stray) <= n {
		return ""
	}
	return s.fe.stray[n]
}

// holdSpec is a request that keeps a handler slot until it is cancelled:
// HoldPath, or Path under a 1-byte window the kit never replenishes.
func (s *session) holdSpec() requestSpec {
	if s.cfg.HoldPath != "" {
		return requestSpec{method: "GET", path: s.cfg.HoldPath, window: 1 << 20}
	}
	return requestSpec{method: "GET", path: s.cfg.Path, window: 1}
}

// inflight counts the requests of xs acknowledged and not complete; under
// fe.mu.
func (s *session) inflight(xs []*exchange) int {
	n := 0
	for _, x := range xs {
		if !x.complete && s.acked(x) {
			n++
		}
	}
	return n
}

// countAcked counts the requests of xs acknowledged; under fe.mu.
func (s *session) countAcked(xs []*exchange) int {
	n := 0
	for _, x := range xs {
		if s.acked(x) {
			n++
		}
	}
	return n
}

func pass(format string, args ...any) Result {
	return Result{Status: Pass, Detail: fmt.Sprintf(format, args...)}
}

func fail(format string, args ...any) Result {
	return Result{Status: Fail, Detail: fmt.Sprintf(format, args...)}
}

func skip(format string, args ...any) Result {
	return Result{Status: Skip, Detail: fmt.Sprintf(format, args...)}
}

// lease is how long a front end lets a worker be silent (zmqx/1 section 11).
const lease = zmqx.LivenessBound
