package workerkit

import (
	"sync"
	"sync/atomic"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/wsframe"
)

// WSGroup is a set of WebSockets that receive the same messages: a chat
// room, a dashboard's viewers, a game's players. Broadcast frames the
// message once and sends it as one reply naming up to 128 connections (as
// Mongrel2 allows), so one message reaches many sockets for the cost of
// one:
//
//	var room workerkit.WSGroup
//
//	func chat(w http.ResponseWriter, r *http.Request) {
//		c, err := workerkit.AcceptWebSocket(w, r, nil)
//		if err != nil {
//			return
//		}
//		room.Add(c)
//		for {
//			_, msg, err := c.ReadMessage()
//			if err != nil {
//				return // the handler's return closes c and removes it
//			}
//			room.Broadcast(workerkit.TextMessage, msg)
//		}
//	}
//
// Like Group, Broadcast is not limited by the members' reply credit: a
// member the front end cannot write to fast enough is cut off there
// (max_buffered_reply). The zero value is an empty group ready to use.
type WSGroup struct {
	sendMu  sync.Mutex // every member sees the messages in the same order
	mu      sync.Mutex
	members map[*WSConn]struct{}
}

// Add puts c in the group until it closes or Remove.
func (g *WSGroup) Add(c *WSConn) {
	c.groupsMu.Lock()
	if c.groups == nil {
		c.groups = make(map[*WSGroup]struct{})
	}
	c.groups[g] = struct{}{}
	c.groupsMu.Unlock()
	g.mu.Lock()
	if g.members == nil {
		g.members = make(map[*WSConn]struct{})
	}
	g.members[c] = struct{}{}
	g.mu.Unlock()
	select {
	case <-c.done: // closed meanwhile: leaveGroups may have missed g
		g.Remove(c)
	default:
	}
}

// Remove takes c out of the group.
func (g *WSGroup) Remove(c *WSConn) {
	g.mu.Lock()
	delete(g.members, c)
	g.mu.Unlock()
	c.groupsMu.Lock()
	delete(c.groups, g)
	c.groupsMu.Unlock()
}

// Len returns the number of members.
func (g *WSGroup) Len() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.members)
}

func (c *WSConn) leaveGroups() {
	c.groupsMu.Lock()
	gs := make([]*WSGroup, 0, len(c.groups))
	for g := range c.groups {
		gs = append(gs, g)
	}
	c.groupsMu.Unlock()
	for _, g := range gs {
		g.Remove(c)
	}
}

// wsPart is the members one reply can reach: same front end and sender.
type wsPart struct {
	fe     *frontEndConn
	sender string
}

// Broadcast sends one message (TextMessage or BinaryMessage) to every
// member. A member busy writing a message of its own gets the broadcast
// right after it, on its own, so frames never interleave.
func (g *WSGroup) Broadcast(messageType int, data []byte) error {
	frame := wsframe.AppendFrame(make([]byte, 0, len(data)+10), byte(messageType), data)
	g.sendMu.Lock()
	defer g.sendMu.Unlock()
	g.mu.Lock()
	members := make([]*WSConn, 0, len(g.members))
	for c := range g.members {
		members = append(members, c)
	}
	g.mu.Unlock()

	parts := make(map[wsPart][]*WSConn)
	var busy []*WSConn
	for _, c := range members {
		// Only members whose writer is free join the shared frames:
		// holding several writers while waiting for one could deadlock
		// with another group's Broadcast.
		if !c.writeMu.TryLock() {
			busy = append(busy, c)
			continue
		}
		if c.closed || c.closeSent || c.rw.err != nil {
			c.writeMu.Unlock()
			continue
		}
		k := wsPart{c.rw.fe, c.rw.sender}
		parts[k] = append(parts[k], c)
	}
	var firstErr error
	for k, cs := range parts {
		if err := sendFrameTo(k, cs, frame); err != nil && firstErr == nil {
			firstErr = err
		}
		for _, c := range cs {
			c.writeMu.Unlock()
		}
	}
	for _, c := range busy {
		c.writeMu.Lock()
		if !c.closed && !c.closeSent {
			_ = c.rw.sendRaw(frame)
		}
		c.writeMu.Unlock()
	}
	return firstErr
}

// sendFrameTo sends frame to cs, 128 connections per reply, cut into reply
// bodies of at most maxMsgBody bytes. Each frame counts as queued for each
// of its sockets, so that a socket's own next frame does not go out
// directly ahead of it (responseWriter.push). The callers hold the
// sockets' writeMu.
func sendFrameTo(k wsPart, cs []*WSConn, frame []byte) error {
	ids := make([]string, len(cs))
	counts := make([]*atomic.Int32, len(cs))
	for i, c := range cs {
		ids[i] = c.rw.connID
		counts[i] = &c.rw.wsQueued
	}
	for off := 0; off < len(frame); off += maxMsgBody {
		piece := frame[off:min(off+maxMsgBody, len(frame))]
		for i := 0; i < len(ids); i += mongrel2.MaxReplyTargets {
			end := min(i+mongrel2.MaxReplyTargets, len(ids))
			f := getFrame()
			f.b = mongrel2.AppendReply(f.b, k.sender, ids[i:end], nil)
			f.b = append(f.b, piece...)
			f.queuedMany = counts[i:end]
			for _, q := range f.queuedMany {
				q.Add(1)
			}
			if err := pushFrame(k.fe, f); err != nil {
				return err
			}
		}
	}
	return nil
}
