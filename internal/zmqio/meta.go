package zmqio

/*
#cgo !windows pkg-config: libzmq
#include <zmq.h>
#include <errno.h>
#include <string.h>
#include <stdlib.h>

// zmqio_user is zmqio_recv's out struct for zmqio_recv_user, with the
// sender's ZAP user id.
typedef struct {
	int more;
	int err;
	void *data;
	int userlen;
	char user[256];
} zmqio_user;

// zmqio_recv_user is zmqio_recv (recv.go) that also copies the part's
// "User-Id" metadata (the id the ZAP handler gave the peer that sent it;
// userlen -1 when it has none).
static int zmqio_recv_user(void *sock, zmq_msg_t *msg, void *buf, size_t cap, size_t keep, int flags, zmqio_user *out) {
	int n;
	const char *user;
	zmq_msg_init(msg);
	do {
		n = zmq_msg_recv(msg, sock, flags);
	} while (n < 0 && zmq_errno() == EINTR);
	if (n < 0) {
		out->err = zmq_errno();
		zmq_msg_close(msg);
		return -1;
	}
	out->more = zmq_msg_more(msg);
	out->userlen = -1;
	user = zmq_msg_gets(msg, "User-Id");
	if (user != NULL) {
		size_t l = strlen(user);
		if (l > sizeof(out->user)) {
			l = sizeof(out->user);
		}
		memcpy(out->user, user, l);
		out->userlen = (int)l;
	}
	if ((size_t)n <= cap && (size_t)n < keep) {
		if (n > 0) {
			memcpy(buf, zmq_msg_data(msg), (size_t)n);
		}
		zmq_msg_close(msg);
	} else {
		out->data = zmq_msg_data(msg);
	}
	return n;
}
*/
import "C"

import (
	"errors"
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
