package caddyzmq

import (
	"errors"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

// What the operator sees of the control channel's workers, and what the
// operator may do to them (drain, resume). Routing decides with
// workerInfo's own fields (control.go, hung.go); this file keeps the
// history those decisions do not need: when a worker joined, since when it
// is in its state, the workers lost lately, and the counts for metrics.

// Worker states, as the admin API, the metrics and the status command name
// them.
const (
	stateLive     = "live"     // takes requests
	statePaused   = "paused"   // hung: told PAUSE until it answers again
	stateDraining = "draining" // finishes what it holds, takes nothing new
	stateLost     = "lost"     // went silent; shown for lostShownFor
)

// lostShownFor is how long a lost worker stays listed: long enough for an
// operator (or a test polling at any pace) to see what happened to it.
const lostShownFor = time.Minute

// workerObs is embedded in workerInfo; guarded by controlPlane.mu.
type workerObs struct {
	joinedAt time.Time
	// since is when the worker entered its state (joined, drained,
	// resumed, said BYE); a pause counts from pausedAt.
	since time.Time
	// drained: an operator drained it through the admin API. It is told
	// PAUSE, so it hands back what it is sent (NACK) and finishes what it
	// holds, until an operator resumes it.
	drained bool
}

// controlObs is embedded in controlPlane. The counters live as long as the
// sockets do, across reloads, so they only ever grow.
type controlObs struct {
	joinedTotal, lostTotal, hungTotal atomic.Uint64
	// gone: workers lost lately, for display; guarded by controlPlane.mu.
	gone map[string]goneWorker
}

type goneWorker struct {
	at            time.Time // declared lost
	lastHeard     time.Time
	maxConcurrent int
	remoteAddr    string
}

// state names wi's state; c.mu is held.
func (wi *workerInfo) state() (string, time.Time) {
	switch {
	case wi.draining || wi.drained:
		return stateDraining, wi.since
	case wi.paused:
		return statePaused, wi.pausedAt
	}
	return stateLive, wi.since
}

// noteJoined records a worker heard for the first time (or again, after it
// was lost); c.mu is held.
func (c *controlPlane) noteJoined(id string, wi *workerInfo, now time.Time) {
	wi.joinedAt, wi.since = now, now
	delete(c.gone, id)
	c.joinedTotal.Add(1)
	c.emit(eventWorkerJoined, id, nil)
}

// noteLost records a worker declared lost; c.mu is held.
func (c *controlPlane) noteLost(id string, wi *workerInfo, now time.Time) {
	if c.gone == nil {
		c.gone = map[string]goneWorker{}
	}
	for gid, g := range c.gone {
		if now.Sub(g.at) > lostShownFor {
			delete(c.gone, gid)
		}
	}
	c.gone[id] = goneWorker{at: now, lastHeard: wi.lastSeen, maxConcurrent: wi.maxConcurrent, remoteAddr: wi.remoteAddr}
	c.lostTotal.Add(1)
	c.emit(eventWorkerLost, id, map[string]any{"draining": wi.draining || wi.drained})
}

// noteHung records a worker found hung: paused, or left taking requests
// because it is the last one.
func (c *controlPlane) noteHung(id string, paused bool) {
	c.hungTotal.Add(1)
	c.emit(eventWorkerHung, id, map[string]any{"paused": paused})
}

// noteResumed records a paused worker given requests again.
func (c *controlPlane) noteResumed(id string, wi *workerInfo, reason string) {
	c.mu.Lock()
	wi.since = time.Now()
	c.mu.Unlock()
	c.emit(eventWorkerResumed, id, map[string]any{"reason": reason})
}

// plainConnectionsLocked estimates the connections to the request socket
// of handlers without the control channel: those not accounted for by a
// worker of the control channel, present or lost lately (a frozen worker's
// connection lingers until ZMTP heartbeats drop it); c.mu is held.
func (c *controlPlane) plainConnectionsLocked() int64 {
	return max(0, c.t.takers.Load()-int64(len(c.workers))-int64(len(c.lost)))
}

func (c *controlPlane) plainConnections() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.plainConnectionsLocked()
}

var (
	errUnknownWorker = errors.New("no such worker on this pool's control channel")
	errLastWorker    = errors.New("it is the last worker taking requests: draining it would leave none (force to drain anyway)")
	errNoControl     = errors.New("the pool has no control channel: its workers cannot be drained")
)

// drain stops giving worker id new requests: it is told PAUSE, hands back
// what it is still sent, and finishes what it holds. Unless force is set,
// the last worker taking requests is not drained, as it would leave the
// pool's requests bouncing until their reply timeout.
func (c *controlPlane) drain(id string, force bool) error {
	now := time.Now()
	c.mu.Lock()
	wi := c.workers[id]
	if wi == nil {
		c.mu.Unlock()
		return errUnknownWorker
	}
	if wi.drained {
		c.mu.Unlock()
		return nil
	}
	others := 0
	for oid, o := range c.workers {
		if oid != id && !o.paused && !o.draining && !o.drained {
			others++
		}
	}
	// Connections of handlers without the control channel (Mongrel2's)
	// take requests too.
	if others == 0 && c.plainConnectionsLocked() == 0 && !force {
		c.mu.Unlock()
		return errLastWorker
	}
	wi.drained, wi.since = true, now
	c.mu.Unlock()
	c.send(id, zmqx.AppendPause(nil))
	c.logger.Info("worker drained by an operator: it finishes what it holds and takes nothing new", zap.String("worker", id))
	c.emit(eventWorkerDraining, id, nil)
	return nil
}

// resume undoes drain. A worker also paused as hung stays paused until it
// answers again.
func (c *controlPlane) resume(id string) error {
	c.mu.Lock()
	wi := c.workers[id]
	if wi == nil {
		c.mu.Unlock()
		return errUnknownWorker
	}
	if !wi.drained {
		c.mu.Unlock()
		return nil
	}
	wi.drained = false
	paused := wi.paused
	c.mu.Unlock()
	if !paused {
		c.send(id, zmqx.AppendResume(nil))
	}
	c.logger.Info("worker resumed by an operator", zap.String("worker", id))
	c.noteResumed(id, wi, "operator")
	return nil
}
