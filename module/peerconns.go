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

// libzmq tells who is connected in two ways that do not meet: its socket
// monitor reports each connection by its file descriptor (ACCEPTED or
// CONNECTED, then DISCONNECTED), and each message received carries the
// descriptor of the connection it came on ("__fd") with the sender's ZAP
// user id. A connTracker joins them, so that the module can list a
// socket's connections with their addresses (the request socket's in
// /zmq/pools: every worker's, plain Mongrel2 handlers included, the only
// place those show as more than a count), name the worker behind a
// connection (a reply socket's connection dropped for an oversized frame)
// and close the connections of one worker key (a key removed by reload, a
// control connection libzmq ignores).
//
// The addresses are read (getsockname, getpeername) when the monitor reads
// the connection's event, which is after the fact: by then the connection
// may have closed and its descriptor gone to a newer connection. The entry
// then has no address (closed) or the newer one's, until the disconnect
// that follows in the event stream removes it; the newer connection's own
// event then reads its addresses again. Once the monitor has caught up,
// every entry is right.
//
// Closing is shutdown(2) on libzmq's descriptor: libzmq then sees the
// connection end and tears it down as if the peer had left (it closes the
// descriptor itself). Descriptors are reused once closed, so a connection is
// only shut down after checking that the descriptor still holds the same
// connection: the same local and peer addresses read when it was accepted.

// peerConn is one connection of a socket.
type peerConn struct {
	fd          int
	since       time.Time
	local, peer string // its socket's own and its peer's address, at accept

	// From the messages received on it (none on a request socket).
	heard  bool
	last   time.Time // when it last carried a message
	key    string    // the sender's CURVE key (ZAP user id)
	worker string    // its control-channel worker id (control socket only)
}

// host is the peer's address without its port ("" for ipc).
func (pc *peerConn) host() string {
	if strings.HasPrefix(pc.peer, unixAddrPrefix) {
		return ""
	}
	h, _, err := net.SplitHostPort(pc.peer)
	if err != nil {
		return pc.peer
	}
	return h
}

// connTracker follows one socket's connections; safe for concurrent use
// (the monitor's reader adds and removes, the socket's owner notes).
type connTracker struct {
	mu    sync.Mutex
	conns map[int]*peerConn
}

// event applies a monitor event; it returns the connection a
// DISCONNECTED ended (nil otherwise).
func (ct *connTracker) event(ev zmq.Event, value int, now time.Time) *peerConn {
	switch ev {
	case zmq.EVENT_ACCEPTED, zmq.EVENT_CONNECTED:
		pc := &peerConn{fd: value, since: now}
		pc.local, pc.peer = sockAddrs(value)
		ct.mu.Lock()
		if ct.conns == nil {
			ct.conns = make(map[int]*peerConn)
		}
		ct.conns[value] = pc
		ct.mu.Unlock()
	case zmq.EVENT_DISCONNECTED:
		ct.mu.Lock()
		pc := ct.conns[value]
		delete(ct.conns, value)
		ct.mu.Unlock()
		return pc
	}
	return nil
}

// note records that a message from key (worker, on the control socket)
// came on connection fd.
func (ct *connTracker) note(fd int, key, worker string) {
	if fd < 0 {
		return
	}
	ct.mu.Lock()
	if pc := ct.conns[fd]; pc != nil {
		pc.heard, pc.key, pc.last = true, key, time.Now()
		if worker != "" {
			pc.worker = worker
		}
	}
	ct.mu.Unlock()
}

// ConnView is one connection to a pool's request socket, as /zmq/pools
// shows it.
type ConnView struct {
	// RemoteAddr is the peer's ip:port ([ip]:port for IPv6); empty for
	// ipc, or when the connection was gone before it was read.
	RemoteAddr string `json:"remote_addr,omitempty"`
	// Since is when the socket monitor reported the connection accepted
	// (or, for a request socket that connects, connected).
	Since time.Time `json:"since"`
}

// list is the connections, oldest first.
func (ct *connTracker) list() []ConnView {
	ct.mu.Lock()
	views := make([]ConnView, 0, len(ct.conns))
	for _, pc := range ct.conns {
		addr := pc.peer
		if strings.HasPrefix(addr, unixAddrPrefix) {
			addr = ""
		}
		views = append(views, ConnView{RemoteAddr: addr, Since: pc.since})
	}
	ct.mu.Unlock()
	slices.SortFunc(views, func(a, b ConnView) int {
		if d := a.Since.Compare(b.Since); d != 0 {
			return d
		}
		return strings.Compare(a.RemoteAddr, b.RemoteAddr)
	})
	return views
}

// find returns copies of the connections for which match holds.
func (ct *connTracker) find(match func(*peerConn) bool) []peerConn {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	var out []peerConn
	for _, pc := range ct.conns {
		if match(pc) {
			out = append(out, *pc)
		}
	}
	return out
}

// closeConns shuts down each connection still held by the same
// descriptor; it returns how many it shut down.
func closeConns(conns []peerConn) int {
	n := 0
	for _, pc := range conns {
		if shutdownConn(pc) {
			n++
		}
	}
	return n
}

// shutdownConn shuts pc's descriptor down if it still holds pc (same
// local and peer addresses as at accept). The window between the check and
// the shutdown is a few instructions; a descriptor reused in it would have
// to be a new connection between the same two addresses.
func shutdownConn(pc peerConn) bool {
	local, peer := sockAddrs(pc.fd)
	if local == "" || local != pc.local || peer != pc.peer {
		return false
	}
	return syscall.Shutdown(pc.fd, syscall.SHUT_RDWR) == nil
}

// sockAddrs reads fd's local and peer addresses ("" when unreadable).
func sockAddrs(fd int) (local, peer string) {
	if fd < 0 {
		return "", ""
	}
	if sa, err := syscall.Getsockname(fd); err == nil {
		local = sockaddrString(sa)
	}
	if sa, err := syscall.Getpeername(fd); err == nil {
		peer = sockaddrString(sa)
	}
	return local, peer
}

// unixAddrPrefix marks an ipc (unix socket) address in a peerConn.
const unixAddrPrefix = "unix:"

// sockaddrString is sa as ip:port ([ip%zone]:port for a link-local IPv6
// peer; an IPv4-mapped address prints as IPv4), or unix:path.
func sockaddrString(sa syscall.Sockaddr) string {
	switch a := sa.(type) {
	case *syscall.SockaddrInet4:
		return net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port))
	case *syscall.SockaddrInet6:
		ip := net.IP(a.Addr[:])
		host := ip.String()
		if ip.To4() == nil && a.ZoneId != 0 {
			if ifc, err := net.InterfaceByIndex(int(a.ZoneId)); err == nil {
				host += "%" + ifc.Name
			}
		}
		return net.JoinHostPort(host, strconv.Itoa(a.Port))
	case *syscall.SockaddrUnix:
		return unixAddrPrefix + a.Name
	}
	return ""
}
