package zmqio

/*
#cgo !windows pkg-config: libzmq
#include <zmq.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdint.h>
#include "zmqio_recv.h"

// zmqio_user is zmqio_recv's out struct for zmqio_recv_user, with the
// sender's ZAP user id.
typedef struct {
	int more;
	int err;
	void *data;
	int userlen;
	char user[256];
	// addr_if: read the part's "Peer-Address" into addr only when the part
	// begins with these addr_if_len bytes (addr_if_len 0: never).
	char addr_if[32];
	size_t addr_if_len;
	int addrlen;
	char addr[256];
	// want_fd: read the part's "__fd" (the connection's file descriptor)
	// into fd (-1 when it has none).
	int want_fd;
	int fd;
} zmqio_user;

// zmqio_peer_port turns addr (len bytes, libzmq's "Peer-Address": the
// peer's numeric host, without its port) into host:port ([host]:port for
// IPv6; an IPv4 peer of a dual-stack socket as IPv4) and returns the new
// length; or len, addr unchanged, when that cannot be done. The port comes
// from the connection's own socket: libzmq attaches its descriptor to each
// message as the property "__fd" (what zmq_msg_get(ZMQ_SRCFD) reads). The
// descriptor may have been closed, and reused by another connection, since
// libzmq read the message, so the result is kept only if that socket's
// peer host is the message's: a reuse by a connection from the same host
// cannot be told apart, and gives that connection's port.
static int zmqio_peer_port(zmq_msg_t *msg, char *addr, int len, size_t cap) {
	struct sockaddr_storage ss;
	socklen_t sslen = sizeof(ss);
	char host[NI_MAXHOST], port[NI_MAXSERV], full[NI_MAXHOST + NI_MAXSERV + 4];
	const char *fd = zmq_msg_gets(msg, "__fd");
	int n;
	if (fd == NULL || len <= 0 || getpeername(atoi(fd), (struct sockaddr *)&ss, &sslen) != 0 ||
			(ss.ss_family != AF_INET && ss.ss_family != AF_INET6) ||
			getnameinfo((struct sockaddr *)&ss, sslen, host, sizeof(host), port, sizeof(port),
				NI_NUMERICHOST | NI_NUMERICSERV) != 0 ||
			strlen(host) != (size_t)len || memcmp(host, addr, (size_t)len) != 0) {
		return len;
	}
	if (ss.ss_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&((struct sockaddr_in6 *)&ss)->sin6_addr)) {
		// An IPv4 peer of a dual-stack socket: shown as the IPv4 address
		// it is, as it would be by an IPv4 socket.
		const uint8_t *a = ((struct sockaddr_in6 *)&ss)->sin6_addr.s6_addr;
		n = snprintf(full, sizeof(full), "%u.%u.%u.%u:%s", a[12], a[13], a[14], a[15], port);
	} else {
		n = snprintf(full, sizeof(full), ss.ss_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, port);
	}
	if (n < 0 || (size_t)n > cap) {
		return len;
	}
	memcpy(addr, full, (size_t)n);
	return n;
}

// zmqio_recv_user is zmqio_recv (recv.go) that also copies the part's
// "User-Id" metadata (the id the ZAP handler gave the peer that sent it;
// userlen -1 when it has none).
static int zmqio_recv_user(void *sock, zmq_msg_t *msg, void *buf, size_t cap, size_t keep, int flags, zmqio_user *out) {
	void *data;
	int n = zmqio_recv_part(sock, msg, flags, &out->err);
	out->addrlen = -1;
	out->fd = -1;
	if (n < 0) {
		return -1;
	}
	out->more = zmq_msg_more(msg);
	out->userlen = zmqio_copy_meta(msg, "User-Id", out->user, sizeof(out->user));
	if (out->addr_if_len > 0 && (size_t)n >= out->addr_if_len &&
			memcmp(zmq_msg_data(msg), out->addr_if, out->addr_if_len) == 0) {
		out->addrlen = zmqio_copy_meta(msg, "Peer-Address", out->addr, sizeof(out->addr));
		out->addrlen = zmqio_peer_port(msg, out->addr, out->addrlen, sizeof(out->addr));
	}
	// libzmq puts its own "Peer-Address" and "__fd" first and never lets
	// the peer's ZMTP READY properties overwrite them; but where it has no
	// peer address it sets neither, and a peer could supply both. Only a
	// message that has libzmq's address has libzmq's descriptor.
	if (out->want_fd && zmq_msg_gets(msg, "Peer-Address") != NULL) {
		const char *fd = zmq_msg_gets(msg, "__fd");
		if (fd != NULL) {
			out->fd = atoi(fd);
		}
	}
	if ((data = zmqio_settle(msg, n, buf, cap, keep)) != NULL) {
		out->data = data;
	}
	return n;
}
*/
import "C"

import (
	"errors"
	"fmt"
	"syscall"
	"unsafe"

	zmq "github.com/pebbe/zmq4"
)

// UserReceiver is a Receiver that also reports who sent each part: the user
// id the socket's ZAP handler gave the peer (with CURVE, the handler chooses
// it, e.g. the peer's public key). Like the socket, it belongs to one
// goroutine.
type UserReceiver struct {
	*Receiver
	out *C.zmqio_user
}

// NewUserReceiver makes a UserReceiver for sock. Close it before sock.
func NewUserReceiver(sock *zmq.Socket) (*UserReceiver, error) {
	r, err := NewReceiver(sock)
	if err != nil {
		return nil, err
	}
	out := (*C.zmqio_user)(C.malloc(C.size_t(unsafe.Sizeof(C.zmqio_user{}))))
	out.addr_if_len, out.addrlen = 0, -1
	out.want_fd, out.fd = 0, -1
	return &UserReceiver{Receiver: r, out: out}, nil
}

// Close frees the receiver.
func (u *UserReceiver) Close() {
	if u.out != nil {
		C.free(unsafe.Pointer(u.out))
		u.out = nil
	}
	u.Receiver.Close()
}

// ReadAddrOf makes the receiver read the sender's address (see Addr) of the
// parts that begin with prefix, and only of those, so that a caller who
// needs it once per connection (on the message that opens one) pays nothing
// for the others. An empty prefix turns it off.
func (u *UserReceiver) ReadAddrOf(prefix string) error {
	if len(prefix) > len(u.out.addr_if) {
		return fmt.Errorf("zmqio: address prefix %q longer than %d bytes", prefix, len(u.out.addr_if))
	}
	for i := range len(prefix) {
		u.out.addr_if[i] = C.char(prefix[i])
	}
	u.out.addr_if_len = C.size_t(len(prefix))
	return nil
}

// Addr is the sender's address of the part last received, if it began with
// ReadAddrOf's prefix; "" otherwise, or when libzmq gives none. For tcp it
// is ip:port ([ip]:port for IPv6): libzmq's "Peer-Address" has the host
// only, so the port is read from the connection's socket while the part is
// in hand (see zmqio_peer_port); should that socket no longer be the
// part's connection, it is the host alone, or, when its descriptor went to
// a new connection from the same host, that one's port. For ipc it is libzmq's
// "Peer-Address" as is: the peer's credentials where the system has them.
func (u *UserReceiver) Addr() string {
	l := int(u.out.addrlen)
	if l <= 0 {
		return ""
	}
	return string(unsafe.Slice((*byte)(unsafe.Pointer(&u.out.addr[0])), l))
}

// ReadFD makes the receiver read, with every part, the file descriptor of
// the connection it came on (libzmq's "__fd" metadata), in the same call:
// a caller that follows connections (who sent on which) pays no extra cgo
// call for it.
func (u *UserReceiver) ReadFD(on bool) {
	u.out.want_fd = 0
	if on {
		u.out.want_fd = 1
	}
}

// FD is the connection file descriptor of the part last received, with
// ReadFD on; -1 otherwise, or when libzmq gives none (inproc). libzmq
// owns it: it is a name for the connection, to be compared with the
// socket monitor's, not an fd to use.
func (u *UserReceiver) FD() int { return int(u.out.fd) }

// RecvKeepUser is Receiver.RecvKeep that also returns the part's user id
// ("" when the peer has none, as without a ZAP handler). The id is a new
// string only when it differs from last, so a caller that passes the
// previous one back allocates nothing in the steady state.
func (u *UserReceiver) RecvKeepUser(buf []byte, keep int, flags zmq.Flag, last string) (part []byte, kept *Msg, more bool, user string, err error) {
	r := u.Receiver
	if r.big >= 0 {
		return nil, nil, false, "", errors.New("zmqio: Recv before Take of a big part")
	}
	buf = buf[:cap(buf)]
	var p unsafe.Pointer
	if len(buf) > 0 {
		p = unsafe.Pointer(&buf[0])
	}
	out := u.out
	n := int(C.zmqio_recv_user(r.h, r.msg, p, C.size_t(len(buf)), C.size_t(keep), C.int(flags), out))
	if n < 0 {
		return nil, nil, false, "", zmq.Errno(syscall.Errno(out.err))
	}
	more = out.more != 0
	if l := int(out.userlen); l > 0 {
		b := unsafe.Slice((*byte)(unsafe.Pointer(&out.user[0])), l)
		if string(b) == last {
			user = last
		} else {
			user = string(b)
		}
	}
	if n >= keep {
		kept = keepMsg(r.msg, unsafe.Slice((*byte)(out.data), n))
		r.msg = newMsg()
		return nil, kept, more, user, nil
	}
	if n > len(buf) {
		r.big = n
		return nil, nil, more, user, ErrTooBig
	}
	return buf[:n], nil, more, user, nil
}

// RecvIntoUser is RecvInto with the part's user id (see RecvKeepUser).
func (u *UserReceiver) RecvIntoUser(buf []byte, flags zmq.Flag, last string) (part []byte, more bool, user string, err error) {
	part, _, more, user, err = u.RecvKeepUser(buf, int(^uint(0)>>1), flags, last)
	if errors.Is(err, ErrTooBig) {
		return u.Take(make([]byte, u.big)), more, user, nil
	}
	return part, more, user, err
}
