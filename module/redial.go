package caddyzmq

import (
	"net"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

// A worker that redials its control connection while the old one lingers
// here (the network dropped it on the worker's side only) is refused by
// libzmq: with CURVE the ROUTER keeps a worker id with the connection that
// holds it (handover off, control.go), and never reads the newcomer. The
// worker then waits for a WELCOME that cannot come (zmqx.WelcomeWait), and
// is not heard. reapSilent would free the id once the old connection had
// been silent for lingeringAfter; this frees it sooner when the newcomer
// authenticated with the key that holds the id, so that the worker is back
// well within the liveness bound.
//
// libzmq shows nothing of a connection it does not read but its descriptor
// and peer address; its key is known only to the ZAP handler, which sees
// the peer's IP address and key, not the connection. So the ZAP handler
// records the control socket's approvals (it has a ZAP domain of its own),
// and an approval of a key from a host that no heard connection accounts
// for is a connection of that key that libzmq does not read.

// redialSilence is how long a connection that spoke must then be silent
// before it is taken for the one a worker redialled from: longer than a
// worker's heartbeat interval, so a live worker's connection is never
// taken for it.
const redialSilence = zmqx.HeartbeatInterval + 50*time.Millisecond

// approvalSettle is how long after its approval a connection may go unheard
// before it is taken for one libzmq does not read: its worker says HELLO
// one round trip after the approval (the CURVE READY), so a newcomer still
// unheard after this, with a round trip well below it, is refused.
const approvalSettle = 2 * sweepInterval

// approvalsKept bounds the approvals an authorizer remembers, and
// approvalAge how long; only recent ones are looked at.
const (
	approvalsKept = 1024
	approvalAge   = 2 * workerDeadAfter
)

// approval is one approved handshake of a control connection.
type approval struct {
	host, key string // hostKey of the peer's address, and its CURVE key
	at        time.Time
}

// hostKey is an address's IP address in the form both libzmq's ZAP
// requests and the descriptors' peer addresses give it; "" when it is not
// an IP address (an ipc peer: all on this host).
func hostKey(h string) string {
	ip := net.ParseIP(h)
	if ip == nil {
		return ""
	}
	return ip.String()
}

// noteControlApproval records that the ZAP handler let key in on the
// control socket from address.
func (a *authorizer) noteControlApproval(address, key string, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	drop := 0
	for drop < len(a.approvals) && (now.Sub(a.approvals[drop].at) > approvalAge || len(a.approvals)-drop >= approvalsKept) {
		drop++
	}
	a.approvals = append(a.approvals[drop:], approval{host: hostKey(address), key: key, at: now})
}

// controlApprovals counts the control socket's approvals of key from host
// after after and no later than until.
func (a *authorizer) controlApprovals(key, host string, after, until time.Time) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, ap := range a.approvals {
		if ap.key == key && ap.host == host && ap.at.After(after) && !ap.at.After(until) {
			n++
		}
	}
	return n
}

// controlKeysAt lists the keys the control socket let in from host during
// the handshake of a connection accepted at since: the candidates for the
// key behind a connection that libzmq does not read (ZAP knows no
// connection, only its host).
func (a *authorizer) controlKeysAt(host string, since time.Time) []string {
	from, to := since.Add(-approvalSlack), since.Add(handshakeIvl)
	a.mu.Lock()
	defer a.mu.Unlock()
	var keys []string
	for _, ap := range a.approvals {
		if ap.host == host && !ap.at.Before(from) && !ap.at.After(to) && !slices.Contains(keys, ap.key) {
			keys = append(keys, ap.key)
		}
	}
	slices.Sort(keys)
	return keys
}

// approvalSlack allows for the accept event being read after the ZAP
// handler answered (they come from different threads).
const approvalSlack = 100 * time.Millisecond

// redial is a worker's redial as reapRedialled finds it: the connection
// that lingers with its id, and the newer ones from its host that libzmq
// does not read.
type redial struct {
	old   peerConn
	fresh []peerConn
}

// findRedials looks, among the heard connections from the hosts of
// unheard (connections not heard yet), for each one whose key has since
// dialled the control socket again with a connection libzmq does not read:
// the worker redialled, and this connection, silent for redialSilence,
// lingers with its id. The unheard connections from its host that came
// after it fell silent go with it: libzmq will never read them.
func (c *controlPlane) findRedials(now time.Time, unheard []peerConn) []redial {
	hosts := map[string]bool{}
	for _, pc := range unheard {
		hosts[hostKey(pc.host())] = true
	}
	stale := c.conns.find(func(pc *peerConn) bool {
		return pc.heard && pc.key != "" && now.Sub(pc.last) > redialSilence && hosts[hostKey(pc.host())]
	})
	var out []redial
	for _, old := range stale {
		host := hostKey(old.host())
		// Connections of the key from that host that were heard account
		// for their approvals; an approval left over is a connection
		// libzmq does not read. Generous about which ones count: more
		// counted means closing less.
		heard := len(c.conns.find(func(pc *peerConn) bool {
			return pc.fd != old.fd && pc.heard && pc.key == old.key && hostKey(pc.host()) == host &&
				pc.since.After(old.last.Add(-workerDeadAfter))
		}))
		if c.t.auth.controlApprovals(old.key, host, old.last, now.Add(-approvalSettle)) <= heard {
			continue
		}
		r := redial{old: old}
		for _, pc := range unheard {
			// Only newcomers as old as the approvals counted: another
			// worker of the host may be in its handshake right now.
			if hostKey(pc.host()) == host && pc.since.After(old.last) && now.Sub(pc.since) > approvalSettle {
				r.fresh = append(r.fresh, pc)
			}
		}
		out = append(out, r)
	}
	return out
}

// reapRedialled closes the connections findRedials finds, so that the
// worker's next dial gets in. It returns the hosts it did that for;
// reapSilent leaves their unheard connections alone this time.
func (c *controlPlane) reapRedialled(now time.Time, unheard []peerConn) map[string]bool {
	done := map[string]bool{}
	for _, r := range c.findRedials(now, unheard) {
		if !shutdownConn(r.old) {
			continue
		}
		done[hostKey(r.old.host())] = true
		c.redials.Add(1)
		closed := closeConns(r.fresh)
		c.logger.Info("closed a worker's control connection that lingers while its key dials again (the worker redialled; "+
			"libzmq reads no second connection under a worker id): the worker gets back in at its next dial",
			zap.String("worker", r.old.worker), zap.String("peer", r.old.peer), zap.String("public_key", r.old.key),
			zap.Duration("silent_for", now.Sub(r.old.last)), zap.Int("new_connections_closed", closed))
	}
	return done
}
