package caddyzmq

import (
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"go.uber.org/zap"
)

// Events emitted through Caddy's events app, with the pool and the worker
// id as data ("pool", "worker"), so that a user can hook them (`events { on
// worker_lost exec ... }` with an exec handler plugin, or a log).
const (
	eventWorkerJoined   = "worker_joined"   // first control message of a worker
	eventWorkerLost     = "worker_lost"     // silent past the liveness bound
	eventWorkerHung     = "worker_hung"     // holds requests and answers none; data "paused"
	eventWorkerResumed  = "worker_resumed"  // a paused or drained worker takes requests again; data "reason"
	eventWorkerDraining = "worker_draining" // an operator drained it (admin API)
)

// workerEvent is one event on its way to the events app. The control plane
// queues it without blocking (it must never wait for an event handler,
// which may run a program); the forwarders of the provisioned handlers emit
// it.
type workerEvent struct {
	t      *transport
	name   string
	worker string
	data   map[string]any
}

// workerEvents is the queue between the control planes, which outlive
// configs, and the handlers' forwarders, which live with their config.
var workerEvents = make(chan workerEvent, 256)

// eventsDropped counts events lost to a full queue (no forwarder, or a slow
// event handler).
var eventsDropped atomic.Uint64

// forwarders counts the running forwardEvents: with none (no config has an
// events app) events are not queued at all.
var forwarders atomic.Int64

// emit queues an event about worker.
func (c *controlPlane) emit(name, worker string, data map[string]any) {
	if forwarders.Load() == 0 {
		return
	}
	select {
	case workerEvents <- workerEvent{t: c.t, name: name, worker: worker, data: data}:
	default:
		eventsDropped.Add(1)
	}
}

// forwardEvents emits queued events through app until ctx (the handler's
// config) ends. Every provisioned handler runs one; whichever takes an
// event emits it, naming the pool as the newest config does.
func forwardEvents(ctx caddy.Context, app *caddyevents.App, logger *zap.Logger) {
	forwarders.Add(1)
	defer forwarders.Add(-1)
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-workerEvents:
			pool, ok := provisioned.poolNameOf(ev.t)
			if !ok {
				continue // its config is gone
			}
			data := map[string]any{"pool": pool, "worker": ev.worker}
			for k, v := range ev.data {
				data[k] = v
			}
			if c := logger.Check(zap.DebugLevel, "emitting event"); c != nil {
				c.Write(zap.String("event", ev.name), zap.String("pool", pool), zap.String("worker", ev.worker))
			}
			app.Emit(ctx, ev.name, data)
		}
	}
}
