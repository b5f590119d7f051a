package caddyzmq

import (
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	zmq "github.com/pebbe/zmq4"
)

// connTable lists the connections of a pool's request socket with their
// peer addresses, for /zmq/pools: every worker's, plain Mongrel2 handlers
// included, the only place those show as more than a count.
//
// libzmq's monitor gives an accepted (or connected) connection's descriptor
// as the event's value, and the disconnect of that connection with the
// same value; the peer address comes from getpeername on it when the
// monitor reads the event. The monitor reads events after the fact, so by
// then the connection may have closed and its descriptor gone to a newer
// connection: the entry then has no address (closed) or the newer one's,
// until the disconnect that follows in the event stream removes it; the
// newer connection's own event then reads its address again. Once the
// monitor has caught up, every entry is right.
type connTable struct {
	mu    sync.Mutex
	conns map[int]ConnView
}

// ConnView is one connection to a pool's request socket.
type ConnView struct {
	// RemoteAddr is the peer's ip:port ([ip]:port for IPv6); empty for
	// ipc, or when the connection was gone before it was read.
	RemoteAddr string `json:"remote_addr,omitempty"`
	// Since is when the socket monitor reported the connection accepted
	// (or, for a request socket that connects, connected).
	Since time.Time `json:"since"`
}

// event notes a monitor event of the request socket.
func (c *connTable) event(ev zmq.Event, fd int, now time.Time) {
	switch ev {
	case zmq.EVENT_ACCEPTED, zmq.EVENT_CONNECTED:
		addr := peerAddrOf(fd)
		c.mu.Lock()
		if c.conns == nil {
			c.conns = map[int]ConnView{}
		}
		c.conns[fd] = ConnView{RemoteAddr: addr, Since: now}
		c.mu.Unlock()
	case zmq.EVENT_DISCONNECTED:
		c.mu.Lock()
		delete(c.conns, fd)
		c.mu.Unlock()
	}
}

// list is the connections, oldest first.
func (c *connTable) list() []ConnView {
	c.mu.Lock()
	views := make([]ConnView, 0, len(c.conns))
	for _, v := range c.conns {
		views = append(views, v)
	}
	c.mu.Unlock()
	slices.SortFunc(views, func(a, b ConnView) int {
		if d := a.Since.Compare(b.Since); d != 0 {
			return d
		}
		return strings.Compare(a.RemoteAddr, b.RemoteAddr)
	})
	return views
}

// peerAddrOf is the ip:port of the tcp connection fd ("" for another kind,
// or when fd is no connection any more).
func peerAddrOf(fd int) string {
	if fd < 0 {
		return ""
	}
	sa, err := syscall.Getpeername(fd)
	if err != nil {
		return ""
	}
	switch a := sa.(type) {
	case *syscall.SockaddrInet4:
		return net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port))
	case *syscall.SockaddrInet6:
		ip := net.IP(a.Addr[:])
		host := ip.String() // an IPv4-mapped address prints as IPv4
		if ip.To4() == nil && a.ZoneId != 0 {
			if ifc, err := net.InterfaceByIndex(int(a.ZoneId)); err == nil {
				host += "%" + ifc.Name
			}
		}
		return net.JoinHostPort(host, strconv.Itoa(a.Port))
	}
	return ""
}
