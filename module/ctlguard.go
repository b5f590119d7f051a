package caddyzmq

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

// What the module does with CURVE about connections that libzmq keeps up
// but that must not be (peerconns.go follows them): a control connection
// libzmq ignores, the connections of a key removed by reload, and a reply
// connection libzmq dropped while its worker stays.

// silentConnAfter is how long an authenticated control connection may go
// without its first message. A zmqx worker says HELLO as its connection
// opens; libzmq reads nothing from a connection whose worker id another
// connection holds (ROUTER_HANDOVER is off with CURVE), so such a one is
// silent for good.
const silentConnAfter = workerDeadAfter

// lingeringAfter is how long a connection that spoke may then be silent
// while another connection from its host waits unheard: a worker sends
// at least one message per heartbeat interval, so its old connection,
// silent for a few of them while a new one from the same host waits, is
// most likely the one it redialled from (dead, and not yet dropped by
// ZMTP heartbeats).
const lingeringAfter = 3 * zmqx.HeartbeatInterval

// Refusal reasons counted with the others (zap.go).
const (
	refusedIDTaken    = "worker_id_taken"
	refusedKeyRemoved = "key_removed"
)

// reapSilent closes the control connections that libzmq ignores, so that
// their worker dials again:
//   - a connection whose key dialled the control socket again while it fell
//     silent, with the new connection not read: at once (reapRedialled);
//   - a connection that said nothing for silentConnAfter since it was
//     accepted: its worker id is taken (an impostor with another key, or the
//     same worker redialling while its old connection lingers). An
//     impostor never gets in while the worker is there;
//   - with it, an older connection from the same host silent for
//     lingeringAfter: the one a redialling worker left behind, which holds
//     its id. The worker then gets back in at its next dial, within the
//     liveness bound.
func (c *controlPlane) reapSilent(now time.Time) {
	if c.t.auth == nil {
		return
	}
	unheard := c.conns.find(func(pc *peerConn) bool { return !pc.heard })
	if len(unheard) == 0 {
		return
	}
	// First the connections that their own key dialled again: at once.
	rescued := c.reapRedialled(now, unheard)
	var waiting []peerConn
	hosts := map[string]bool{}
	for _, pc := range unheard {
		if now.Sub(pc.since) > 2*sweepInterval && !rescued[hostKey(pc.host())] {
			waiting = append(waiting, pc)
			hosts[hostKey(pc.host())] = true
		}
	}
	if len(waiting) == 0 {
		return
	}
	lingering := c.conns.find(func(pc *peerConn) bool {
		return pc.heard && now.Sub(pc.last) > lingeringAfter && hosts[hostKey(pc.host())]
	})
	redialled := map[string]bool{}
	for _, pc := range lingering {
		redialled[hostKey(pc.host())] = true
		if shutdownConn(pc) {
			c.logger.Info("closed a worker's control connection silent while a new one from its host waits: it most likely redialled",
				zap.String("worker", pc.worker), zap.String("peer", pc.peer), zap.Duration("silent_for", now.Sub(pc.last)))
		}
	}
	for _, pc := range waiting {
		early := redialled[hostKey(pc.host())]
		if !early && now.Sub(pc.since) <= silentConnAfter {
			continue
		}
		if !shutdownConn(pc) || early {
			continue // a redial: it dials again, into a free id
		}
		if c.t.auth.stalledSince(hostKey(pc.host()), pc.since.Add(-time.Second)) {
			// Most likely a worker whose key is refused, its handshake
			// held open by libzmq: refused and logged already.
			continue
		}
		c.t.auth.count(refusedIDTaken)
		c.t.warnPeer("closed an authenticated control connection that sent nothing: libzmq reads nothing from a connection "+
			"claiming a worker id that another connection holds (with CURVE an id stays with the connection that has it), "+
			"so this is a second connection under a taken id (another key, or a worker redialling while its old connection lingers); "+
			"libzmq does not show which id it claims; candidate_keys are the keys let in on the control socket from its host during its handshake", "",
			zap.String("peer", pc.peer), zap.Duration("silent_for", now.Sub(pc.since)),
			zap.Strings("candidate_keys", c.t.auth.controlKeysAt(hostKey(pc.host()), pc.since)))
	}
}

var errKeyRemoved = errors.New("the worker's CURVE key was removed from the allow-list")

// errTakenByRemoved fails a request that a worker whose key was removed
// held or acknowledged (it had received it before its connection closed):
// its reply would be dropped, so the request is lost with it, retried where
// the method allows (errWorkerLost).
var errTakenByRemoved = fmt.Errorf("%w: %w", errWorkerLost, errKeyRemoved)

// failTakenByRemoved fails the requests an ACK from a removed key names
// that no other worker holds.
func (c *controlPlane) failTakenByRemoved(payload []byte) {
	m, err := zmqx.Parse(payload)
	if err != nil || m.Verb != zmqx.Ack {
		return
	}
	for id, rest := zmqx.NextID(m.IDs); id != nil; id, rest = zmqx.NextID(rest) {
		n, ok := mongrel2.ParseUint(id)
		if !ok {
			continue
		}
		if ex := c.t.lookup(n); ex != nil && ex.workerID() == "" {
			ex.fail(errTakenByRemoved)
		}
	}
}

// dropKeys makes a reload that removed keys from the allow-list take
// effect for workers already connected (ZAP only runs at the handshake):
//   - their control and reply connections (known by the key their
//     messages carry) are closed, and they dial again into a refusal;
//   - the control channel forgets their worker ids and fails the requests
//     they held, which go back to balancing;
//   - the request socket's connections from the hosts those keys spoke
//     from (their messages, and every handshake ZAP let in with them) are
//     closed: libzmq tells nothing about who is behind a PUSH connection
//     (it only sends), so the host is the best it gives. Other
//     workers on those hosts dial again at once; a request queued toward
//     one of them when its connection closed was not acknowledged, and the
//     control channel's dispatch deadline sends it again, safely.
//
// Workers of other hosts and their requests are not touched.
func (t *transport) dropKeys(removed []string) {
	if t.auth == nil || len(removed) == 0 {
		return
	}
	gone := func(pc *peerConn) bool { return slices.Contains(removed, pc.key) }
	var ctl []peerConn
	if t.control != nil {
		ctl = t.control.conns.find(gone)
	}
	rep := t.repConns.find(gone)
	hosts := map[string]bool{}
	workers := map[string]bool{}
	for _, pc := range append(slices.Clip(ctl), rep...) {
		hosts[hostKey(pc.host())] = true
		if pc.worker != "" {
			workers[pc.worker] = true
		}
	}
	for _, k := range removed {
		if t.control != nil {
			for _, w := range t.control.ids.workersOf(k) {
				workers[w] = true
			}
		}
		// A worker that has sent nothing yet (no reply, no control
		// channel) is known only from its handshakes.
		for _, h := range t.auth.takeHosts(k) {
			hosts[h] = true
		}
	}
	if len(hosts) == 0 && len(workers) == 0 {
		return // none of the removed keys is connected
	}
	req := t.reqConns.find(func(pc *peerConn) bool { return hosts[hostKey(pc.host())] })
	if len(req) > 0 {
		t.redialUntil.Store(time.Now().Add(redialGrace).UnixNano())
	}
	closed := closeConns(ctl) + closeConns(rep)
	reqClosed := closeConns(req)
	failed := 0
	ids := make([]string, 0, len(workers))
	for w := range workers {
		ids = append(ids, w)
		if t.control != nil {
			// Lost with the worker: retried elsewhere where the method
			// allows, as the log line below says (not a 502 for all).
			failed += t.control.removeWorker(w, errTakenByRemoved)
		}
	}
	slices.Sort(ids)
	for range removed {
		t.auth.count(refusedKeyRemoved)
	}
	t.logger.Warn("worker keys removed from the allow-list: closed their connections; their requests fail over to other workers "+
		"and nothing they send is taken (request connections from their hosts were closed too and redial)",
		zap.String("pool", t.auth.pool), zap.Strings("removed_keys", removed), zap.Strings("workers", ids),
		zap.Int("connections_closed", closed), zap.Int("request_connections_closed", reqClosed), zap.Int("requests_failed", failed))
}

// removeWorker forgets worker as lost and fails the requests it held.
func (c *controlPlane) removeWorker(worker string, err error) int {
	now := time.Now()
	c.mu.Lock()
	if wi := c.workers[worker]; wi != nil {
		c.noteLost(worker, wi, now)
		delete(c.workers, worker)
		if c.lost == nil {
			c.lost = map[string]time.Time{}
		}
		// Its request connection may linger a moment: it still counts
		// as a zmqx peer for dispatch deadlines (coversPeers).
		c.lost[worker] = now
	}
	c.mu.Unlock()
	c.ids.forget(worker)
	return c.t.failWorker(worker, err)
}

// workersOf lists the worker ids bound to key.
func (w *workerKeys) workersOf(key string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for id, k := range w.keys {
		if k == key {
			out = append(out, id)
		}
	}
	return out
}

// replyGoneJudgeAfter is how long a reply connection's end waits before
// it is judged: a worker that exits closes all its connections at once,
// and its control connection's end must have been seen by then.
const replyGoneJudgeAfter = workerDeadAfter

// maxSuspects bounds the reply connections waiting to be judged.
const maxSuspects = 256

// suspectConns holds ended reply connections until they are judged.
type suspectConns struct {
	mu    sync.Mutex
	conns []peerConn
	ended []time.Time
}

// replyConnGone is the reply socket's monitor noting a connection's end.
// Only one that carried replies from a known key is worth judging.
func (t *transport) replyConnGone(pc *peerConn) {
	if t.control == nil || !pc.heard || pc.key == "" {
		return
	}
	s := &t.control.replyGone
	s.mu.Lock()
	if len(s.conns) < maxSuspects {
		s.conns = append(s.conns, *pc)
		s.ended = append(s.ended, time.Now())
	}
	s.mu.Unlock()
}

// judgeReplyGone looks at the reply connections that ended at least
// replyGoneJudgeAfter ago: one whose worker is still on the control
// channel, not leaving, did not end because the worker left. libzmq ended
// it, and says nothing about why (its monitor reports the disconnection
// only); what it closes a connection for is a frame over the socket's
// ZMQ_MAXMSGSIZE, or a protocol error. Logged once per warnEvery.
func (c *controlPlane) judgeReplyGone(now time.Time) {
	s := &c.replyGone
	s.mu.Lock()
	n := 0
	for n < len(s.conns) && now.Sub(s.ended[n]) >= replyGoneJudgeAfter {
		n++
	}
	due, endedAt := slices.Clone(s.conns[:n]), slices.Clone(s.ended[:n])
	s.conns, s.ended = slices.Delete(s.conns, 0, n), slices.Delete(s.ended, 0, n)
	s.mu.Unlock()
	for i, pc := range due {
		ended := endedAt[i]
		// The control connection that was up before the reply one ended
		// must still be: a worker that left, or restarted, has not.
		if len(c.conns.find(func(cc *peerConn) bool { return cc.key == pc.key && cc.since.Before(ended) })) == 0 {
			continue
		}
		workers := c.ids.workersOf(pc.key)
		live := false
		for _, w := range workers {
			live = live || c.isLive(w)
		}
		if !live {
			continue
		}
		c.t.warnPeer("the front end's libzmq closed a worker's reply connection while the worker stays on the control channel: "+
			"libzmq closes a connection that sends a frame larger than the reply socket's cap (ZMQ_MAXMSGSIZE) or that breaks the protocol; "+
			"the worker must send large responses in smaller frames", pc.key,
			zap.Strings("worker", workers), zap.String("peer", pc.peer), zap.String("socket", "reply"),
			zap.Int64("max_frame_bytes", c.t.cfg.maxReplyFrame))
	}
}

// redialGrace is how long, after dropKeys closed request connections, a
// request that finds no worker waits for the workers that stay to dial
// again (libzmq redials after its reconnect interval, then the handshake),
// instead of getting 503 at once.
const redialGrace = 2 * time.Second

// awaitRedial waits, while one of h's transports is within its
// redialGrace, for one of its pools to have a worker again, polling; it
// reports whether one has. Only the path to a 503 comes here.
func (h *Handler) awaitRedial(ctx context.Context) bool {
	var until int64
	for _, p := range h.pools {
		until = max(until, p.transport.redialUntil.Load())
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for time.Now().UnixNano() < until {
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
		for _, p := range h.pools {
			if p.live() {
				return true
			}
		}
	}
	return false
}
