package caddyzmq

import (
	"net/http"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

// addSessionHeader tells the worker the request's affinity session
// (zmqx.HeaderSession), so that a workerkit worker with PinnedSessions runs
// the session on one thread. Only with a control channel: affinity needs
// it to reach the same worker process in the first place.
func (h *Handler) addSessionHeader(e *mongrel2.HeaderEncoder, r *http.Request, t *transport) {
	if h.Affinity == nil || t.control == nil {
		return
	}
	if key := h.Affinity.sessionKey(r); key != "" {
		e.Add(zmqx.HeaderSession, key)
	}
}
