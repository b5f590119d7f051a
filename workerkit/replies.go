package workerkit

import (
	"fmt"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/zmqbridge/caddy-zmq/internal/zmqio"
)

// testHookActive, when set by tests, observes subscription state changes.
var testHookActive func(index int, active bool)

// testHookSubs, when set by tests, observes the subscription count of a
// front end in bind mode.
var testHookSubs func(index, subs int)

// runReplies owns the front end's reply socket (XPUB connected to the front
// end's SUB, or bound in bind mode). It publishes replies from fe.out and
// watches subscription frames, which are the only reliable sign that the
// front end can hear us.
func (fe *frontEndConn) runReplies(ready chan<- error, quit <-chan struct{}) {
	defer close(fe.dead)
	sock, err := fe.s.zctx.NewSocket(zmq.XPUB)
	if err == nil {
		err = firstErr(
			sock.SetLinger(0),
			sock.SetSndhwm(replyHWM),
			sock.SetXpubNodrop(true),
			sock.SetSndtimeo(sendTimeout),
			sock.SetHeartbeatIvl(heartbeatIvl),
			sock.SetHeartbeatTimeout(heartbeatTimeout),
			fe.secure(sock),
		)
	}
	var stopWatch func()
	if err == nil {
		stopWatch, err = fe.watchCurve(sock)
	}
	if err == nil {
		if fe.cfg.Bind {
			err = firstErr(
				// Every subscription and unsubscription, not only the first
				// and last of a topic: front ends connecting with the same
				// sender id count one each (see frontEndConn.subs). A front end
				// that goes away is unsubscribed from its topics.
				sock.SetXpubVerboser(1),
				sock.Bind(fe.cfg.Replies),
			)
		} else {
			err = firstErr(
				// Without IMMEDIATE a connecting socket keeps its pipe (and
				// the front end's subscriptions) across disconnects, and we
				// would never learn that the front end went away.
				sock.SetImmediate(true),
				sock.Connect(fe.cfg.Replies),
			)
		}
	}
	if err != nil {
		err = fmt.Errorf("workerkit: reply socket for %s: %w", fe.cfg.Replies, err)
	}
	ready <- err
	if err != nil {
		if stopWatch != nil {
			stopWatch()
		}
		if sock != nil {
			_ = sock.Close()
		}
		return
	}
	defer stopWatch()
	fe.reply.mu.Lock()
	fe.reply.sock = sock
	fe.reply.mu.Unlock()

	topics := make(map[string]int)
	delay := subCheckMin
	timer := time.NewTimer(delay)
	defer timer.Stop()
	waitingSince := time.Now()
	warned := false
	var deadline time.Time // set once quitting: how long a slow front end may hold us
	for {
		select {
		case f := <-fe.out:
			fe.reply.mu.Lock()
			fe.send(sock, f, topics, deadline)
			fe.reply.mu.Unlock()
		case <-fe.subPoke: // nil unless bind mode
			// A front end connected to the request socket and has not
			// subscribed yet: the request socket's owner waits for it.
			fe.reply.mu.Lock()
			fe.readSubs(sock, topics)
			fe.reply.mu.Unlock()
			delay = subCheckMin
			timer.Reset(delay)
		case <-timer.C:
			fe.reply.mu.Lock()
			fe.readSubs(sock, topics)
			fe.reply.mu.Unlock()
			if fe.active.Load() && (!fe.cfg.Bind || fe.peers.Load() <= fe.subs.Load()) {
				delay = subCheckMax
				waitingSince = time.Time{}
			} else if fe.active.Load() {
				// Bind mode, a subscription is awaited (see subPoke).
				delay = min(2*delay, subCheckMax)
			} else {
				delay = min(2*delay, subCheckMax)
				if waitingSince.IsZero() {
					waitingSince = time.Now()
					warned = false
				}
				if !warned && time.Since(waitingSince) > 5*time.Second {
					if fe.cfg.Bind {
						fe.log.Info("no front end has connected yet (bind mode: front ends connect to us)", "replies", fe.cfg.Replies)
					} else {
						fe.log.Warn("front end still not subscribed to replies; is it running?", "replies", fe.cfg.Replies)
					}
					warned = true
				}
			}
			timer.Reset(delay)
		case <-quit:
			deadline = time.Now().Add(replyLinger)
			// From now on every frame comes through fe.out.
			fe.reply.mu.Lock()
			fe.reply.sock = nil
			fe.reply.mu.Unlock()
		drain:
			for {
				select {
				case f := <-fe.out:
					fe.send(sock, f, topics, deadline)
				default:
					break drain
				}
			}
			_ = sock.SetLinger(replyLinger)
			if err := sock.Close(); err != nil {
				fe.log.Warn("closing reply socket", "err", err)
			}
			return
		}
	}
}

// send publishes one reply frame. With XPUB_NODROP a full queue blocks for
// sendTimeout; meanwhile the front end may have gone away, which is the only
// case in which a reply is dropped.
func (fe *frontEndConn) send(sock *zmq.Socket, f *frame, topics map[string]int, deadline time.Time) {
	defer putFrame(f)
	for {
		err := sendFrame(sock, f, 0)
		if err == nil {
			return
		}
		if !isEAGAIN(err) {
			fe.log.Error("sending reply", "err", err)
			return
		}
		fe.readSubs(sock, topics)
		if !fe.active.Load() || fe.s.base.Err() != nil || (!deadline.IsZero() && time.Now().After(deadline)) {
			fe.log.Warn("dropping reply: front end not reading")
			return
		}
	}
}

// sendFrame sends f as one message. On failure f is unchanged (its C
// memory still its own), to send again or to recycle.
func sendFrame(sock *zmq.Socket, f *frame, flags zmq.Flag) error {
	if c := f.inC(); c != nil {
		return zmqio.SendOwned(sock, c, len(f.b), flags)
	}
	_, err := sock.SendBytes(f.b, flags)
	return err
}

// readSubs reads the pending subscription frames: 0x01+topic subscribes,
// 0x00+topic unsubscribes. Mongrel2 with an empty recv_ident subscribes to the
// empty topic, so a bare 0x01 counts too. topics counts the subscriptions of
// each topic: in connect mode the XPUB reports only the first and the last,
// so a count is 0 or 1; in bind mode (XPUB_VERBOSER) it is the number of
// front ends subscribed to it.
func (fe *frontEndConn) readSubs(sock *zmq.Socket, topics map[string]int) {
	was := len(topics) > 0
	changed := false
	for {
		msg, err := sock.RecvBytes(zmq.DONTWAIT)
		if err != nil {
			if !isEAGAIN(err) {
				fe.log.Error("reading subscriptions", "err", err)
			}
			break
		}
		if len(msg) == 0 {
			continue
		}
		switch msg[0] {
		case 1:
			topics[string(msg[1:])]++
			changed = true
		case 0:
			if topics[string(msg[1:])] <= 1 {
				delete(topics, string(msg[1:]))
			} else {
				topics[string(msg[1:])]--
			}
			changed = true
		}
	}
	if !changed {
		return
	}
	if fe.cfg.Bind {
		n := 0
		for _, c := range topics {
			n += c
		}
		if old := fe.subs.Swap(int64(n)); old != int64(n) {
			fe.log.Debug("subscriptions changed", "subscriptions", n, "request_connections", fe.peers.Load())
			if testHookSubs != nil {
				testHookSubs(fe.index, n)
			}
			select {
			case fe.kick <- struct{}{}:
			default:
			}
		}
	}
	now := len(topics) > 0
	if now == was {
		return
	}
	// Tests observe the change: activation before it takes effect, pausing
	// after, so that whatever they do next is ordered with it.
	if now && testHookActive != nil {
		testHookActive(fe.index, now)
	}
	fe.active.Store(now)
	if !now && testHookActive != nil {
		testHookActive(fe.index, now)
	}
	if now {
		fe.log.Info("front end subscribed: taking work")
	} else {
		fe.log.Warn("front end unsubscribed (gone away?): pausing until it comes back")
		// Its Group members lost what was published meanwhile, and a
		// restarted front end never reports their clients gone.
		fe.s.dropMembers(fe)
	}
	for _, k := range []chan struct{}{fe.kick, fe.kickAddr} {
		select {
		case k <- struct{}{}:
		default:
		}
	}
}

const (
	// sendTimeout bounds one blocking send on a full reply socket, so its
	// owner keeps watching subscriptions and shutdown while the front end
	// is slow.
	sendTimeout = 100 * time.Millisecond
	// subCheckMax is how often the reply socket's owner reads subscription
	// frames once things are steady; while waiting for a front end it starts
	// at subCheckMin and backs off.
	subCheckMin = time.Millisecond
	subCheckMax = 50 * time.Millisecond
	// replyLinger lets queued replies reach the front end after Close.
	replyLinger = 2 * time.Second
	// replyHWM is large because replies must not be dropped: with
	// XPUB_NODROP a full queue blocks the sender instead.
	replyHWM = 10000
)
