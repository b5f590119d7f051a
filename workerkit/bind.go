package workerkit

import (
	"fmt"
	"time"

	zmq "github.com/pebbe/zmq4"
)

// Bind mode (FrontEnd.Bind): the worker binds its PULL and XPUB sockets and
// front ends connect to them, reverse_proxy style. Several front ends may
// connect to one worker. A PUB drops what it publishes before a
// subscription has reached it, so the worker takes requests only while
// every front end connected to its request socket has subscribed to its
// replies: requests that come in earlier wait in the PULL socket's queue.

const (
	// bindJoinGrace bounds the wait for the subscription of a front end
	// that connected to the request socket. Meanwhile the worker takes no
	// work from any front end (it cannot tell whose requests are queued),
	// so a peer that connects to the request socket and never subscribes
	// (not a front end, or a broken one) costs this once per connection.
	bindJoinGrace = time.Second
	// bindPeerPoll is how often connection events are read while waiting
	// for a subscription (a front end that leaves ends the wait too).
	bindPeerPoll = 10 * time.Millisecond
)

// testHookBindWait, when set by tests, is called when the request socket's
// owner of a binding worker waits before taking work: peers connections to
// the request socket, subs subscriptions to the replies.
var testHookBindWait func(index int, peers, subs int64)

// bindGate is the request socket owner's view of who is connected in bind
// mode. It owns the monitor socket of the request socket.
type bindGate struct {
	fe       *frontEndConn
	mon      *zmq.Socket
	endpoint string           // as bound, for Unbind
	conns    map[int]struct{} // file descriptors of connections to the request socket
	// The wait for subscriptions: until graceEnd, armed when the number
	// of connections reached gracePeers.
	graceEnd   time.Time
	gracePeers int64
	warned     bool
}

// bindRequests monitors and binds the request socket of a front end in bind
// mode. The monitor is connected before the bind, so that no connection
// goes uncounted.
func (fe *frontEndConn) bindRequests(sock *zmq.Socket) (*bindGate, error) {
	ep := fmt.Sprintf("inproc://workerkit-bind-monitor-%d", ctlSeq.Add(1))
	if err := sock.Monitor(ep, zmq.EVENT_ACCEPTED|zmq.EVENT_DISCONNECTED); err != nil {
		return nil, err
	}
	mon, err := fe.s.zctx.NewSocket(zmq.PAIR)
	if err == nil {
		err = firstErr(mon.SetLinger(0), mon.Connect(ep))
	}
	if err == nil {
		err = sock.Bind(fe.cfg.Requests)
	}
	if err != nil {
		_ = sock.Monitor("", 0)
		if mon != nil {
			_ = mon.Close()
		}
		return nil, err
	}
	g := &bindGate{fe: fe, mon: mon, endpoint: fe.cfg.Requests, conns: make(map[int]struct{})}
	if last, err := sock.GetLastEndpoint(); err == nil && last != "" {
		g.endpoint = last
	}
	fe.log.Info("bound; waiting for front ends to connect", "requests", fe.cfg.Requests, "replies", fe.cfg.Replies)
	return g, nil
}

// readPeers takes the pending connection events.
func (g *bindGate) readPeers() int64 {
	for {
		ev, _, fd, err := g.mon.RecvEvent(zmq.DONTWAIT)
		if err != nil {
			break
		}
		switch ev {
		case zmq.EVENT_ACCEPTED:
			g.conns[fd] = struct{}{}
		case zmq.EVENT_DISCONNECTED:
			delete(g.conns, fd)
		}
	}
	n := int64(len(g.conns))
	if g.fe.peers.Swap(n) != n {
		g.fe.log.Debug("request connections changed", "request_connections", n, "subscriptions", g.fe.subs.Load())
	}
	return n
}

func (g *bindGate) close(sock *zmq.Socket) {
	_ = sock.Monitor("", 0)
	_ = g.mon.Close()
}

// waitBound blocks until the request socket of a binding worker may be read:
// some front end has subscribed, and there are at least as many
// subscriptions as connections to the request socket (every front end that
// can send us work can hear the answer), or the join grace has run out.
// false means stop. Called by the request socket's owner only.
func (fe *frontEndConn) waitBound(g *bindGate) bool {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		select {
		case <-fe.s.stop:
			return false
		default:
		}
		peers, subs := g.readPeers(), fe.subs.Load()
		var tick <-chan time.Time
		if subs > 0 {
			if peers <= subs {
				g.graceEnd, g.gracePeers, g.warned = time.Time{}, 0, false
				return true
			}
			now := time.Now()
			if g.graceEnd.IsZero() || peers > g.gracePeers {
				// A front end connected: it subscribes within moments.
				g.graceEnd, g.gracePeers = now.Add(bindJoinGrace), peers
				select {
				case fe.subPoke <- struct{}{}:
				default:
				}
			}
			left := g.graceEnd.Sub(now)
			if left <= 0 {
				if !g.warned {
					g.warned = true
					fe.log.Warn("a peer connected to the request socket has not subscribed to replies; taking work anyway",
						"request_connections", peers, "subscriptions", subs, "waited", bindJoinGrace)
				}
				return true
			}
			// Connection events are not pushed to us: look again soon.
			if timer == nil {
				timer = time.NewTimer(min(left, bindPeerPoll))
			} else {
				timer.Reset(min(left, bindPeerPoll))
			}
			tick = timer.C
		}
		// With no subscription at all only a subscription (kick) helps.
		if testHookBindWait != nil {
			testHookBindWait(fe.index, peers, subs)
		}
		select {
		case <-fe.kick:
		case <-tick:
		case <-fe.s.stop:
			return false
		}
	}
}
