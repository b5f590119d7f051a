package caddyzmq

import (
	"errors"
	"time"

	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
	"go.uber.org/zap"
)

// Hung workers: alive (heartbeats go on, so neither ZMTP nor the control
// channel's liveness bound notices anything) but answering nothing. The
// sweep watches, per worker, its acknowledged requests still waiting for a
// first reply frame, and whether any of its requests got one lately:
//
//	hung  = it holds a request unanswered for hung_timeout, and no request
//	        of it got a first reply frame within hung_timeout.
//
// A hung worker is told PAUSE (zmqx/1): it keeps reading this front end's
// request socket (a pipe left full would stall libzmq's engine and its
// heartbeats) but starts nothing, and hands each request back with NACK;
// Caddy sends those again, and PUSH's round robin puts them on another
// worker. Its unanswered idempotent requests that may still be retried
// are taken back (DISCONNECT, then retried elsewhere); the others keep
// waiting for their reply, since a merely slow worker may still answer.
// It gets RESUME once it answers again, or once it holds nothing more and
// has sat out a cool-down that doubles with every pause in a row (see
// pauseCooldown): a circuit breaker's half-open state. The last
// worker still taking requests is never paused: there would be nowhere
// else to send them.
//
// Streams count as answered at their first frame, so Server-Sent Events and
// other long-lived responses that send their head early never look hung; a
// long poll that says nothing for longer than hung_timeout does, on a
// worker that answers nothing else meanwhile.

var errWorkerHung = errors.New("the worker that took the request answers nothing (hung)")

// sweepHung runs with the liveness sweep.
func (c *controlPlane) sweepHung(now time.Time, hungAfter time.Duration) {
	// The oldest unanswered, unfailed request of each worker.
	var oldest map[*workerInfo]time.Time
	c.t.mu.RLock()
	for _, ex := range c.t.pending {
		ex.mu.Lock()
		if ex.wi != nil && !ex.answered && ex.err == nil {
			if oldest == nil {
				oldest = make(map[*workerInfo]time.Time)
			}
			if o, ok := oldest[ex.wi]; !ok || ex.ackedAt.Before(o) {
				oldest[ex.wi] = ex.ackedAt
			}
		}
		ex.mu.Unlock()
	}
	c.t.mu.RUnlock()

	type change struct {
		id      string
		wi      *workerInfo
		since   time.Duration // unanswered for
		pause   bool
		resume  bool
		noPause bool // hung, but the last worker taking requests
		retake  bool // paused and still hung
	}
	var changes []change
	c.mu.Lock()
	active := 0 // workers that take requests
	for _, wi := range c.workers {
		if !wi.paused && !wi.draining && !wi.drained {
			active++
		}
	}
	for id, wi := range c.workers {
		progressed := false
		if a := wi.answered.Load(); a != wi.seenAnswered {
			wi.seenAnswered = a
			wi.lastProgress = now
			wi.trips = 0
			progressed = true
		}
		o, holding := oldest[wi]
		stuck := holding && now.Sub(o) > hungAfter && now.Sub(wi.lastProgress) > hungAfter
		if !stuck && wi.paused && !progressed && (holding || now.Sub(wi.pausedAt) < pauseCooldown(hungAfter, wi.trips)) {
			// Paused, silent: it stays so until it answers something, or
			// holds nothing and has sat out its cool-down (half-open).
			stuck = true
		}
		switch {
		case stuck && !wi.paused:
			ch := change{id: id, wi: wi, since: now.Sub(o)}
			if active > 1 && !wi.draining && !wi.drained {
				wi.paused = true
				wi.pausedAt = now
				wi.trips++
				active--
				ch.pause = true
			} else {
				ch.noPause = true
			}
			if !wi.hung || ch.pause {
				changes = append(changes, ch)
			}
			wi.hung = true
		case stuck && wi.paused:
			// Requests it started from its local queue after the PAUSE
			// are taken back too.
			changes = append(changes, change{id: id, wi: wi, retake: true})
		case !stuck && wi.hung:
			wi.hung = false
			// An operator's drain outlasts the hang: no RESUME then.
			ch := change{id: id, wi: wi, resume: wi.paused && !wi.drained}
			if wi.paused {
				wi.paused = false
				active++
			}
			changes = append(changes, ch)
		}
	}
	c.mu.Unlock()

	for _, ch := range changes {
		switch {
		case ch.pause:
			c.noteHung(ch.id, true)
			n := c.t.failHung(ch.wi)
			c.send(ch.id, zmqx.AppendPause(nil))
			c.logger.Warn("worker hung: it answers nothing; paused (no new requests) until it answers or its cool-down ends",
				zap.String("worker", ch.id), zap.Duration("unanswered_for", ch.since),
				zap.Duration("hung_timeout", hungAfter), zap.Int("requests_retried", n))
		case ch.noPause:
			c.noteHung(ch.id, false)
			c.logger.Warn("worker hung: it answers nothing, but it is the last worker taking requests",
				zap.String("worker", ch.id), zap.Duration("unanswered_for", ch.since),
				zap.Duration("hung_timeout", hungAfter))
		case ch.resume:
			c.send(ch.id, zmqx.AppendResume(nil))
			c.noteResumed(ch.id, ch.wi, "answering")
			c.logger.Info("worker recovered: it answers again, or holds no request", zap.String("worker", ch.id))
		case ch.retake:
			if n := c.t.failHung(ch.wi); n > 0 {
				c.logger.Debug("taking requests back from a paused hung worker",
					zap.String("worker", ch.id), zap.Int("requests_retried", n))
			}
		default:
			c.logger.Info("worker no longer hung", zap.String("worker", ch.id))
		}
	}
}

// pauseCooldown is how long a paused worker that answered nothing sits out
// before it is given requests again: hung_timeout (at least
// minPauseCooldown, so that a hung worker does not flap), doubled with every
// pause since it last answered, at most maxPauseCooldown.
func pauseCooldown(hungAfter time.Duration, trips int) time.Duration {
	d := max(hungAfter, minPauseCooldown)
	for i := 1; i < trips && d < maxPauseCooldown; i++ {
		d *= 2
	}
	return min(d, maxPauseCooldown)
}

const (
	minPauseCooldown = 2 * time.Second
	maxPauseCooldown = 30 * time.Second
)

// failHung takes back the unanswered requests of a hung worker that may be
// retried. The request goroutine tells the worker (DISCONNECT), so that a
// handler that wakes up later does not run them too.
func (t *transport) failHung(wi *workerInfo) int {
	n := 0
	t.mu.RLock()
	for _, ex := range t.pending {
		if !ex.retryable {
			continue
		}
		ex.mu.Lock()
		hit := ex.wi == wi && !ex.answered && ex.err == nil
		if hit {
			ex.err = errWorkerHung
			n++
		}
		ex.mu.Unlock()
		if hit {
			ex.wake()
		}
	}
	t.mu.RUnlock()
	return n
}
