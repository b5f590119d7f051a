package zmqio

/*
#cgo !windows pkg-config: libzmq
#include <zmq.h>
#include <errno.h>
#include <string.h>
#include <stdlib.h>
#include "zmqio_recv.h"

// zmqio_out holds zmqio_recv's results other than the size. It lives in C
// memory: Go locals whose address went to C would each escape to the heap,
// an allocation per receive.
typedef struct {
	int more;
	int err;
	void *data;
} zmqio_out;

// zmqio_recv receives one message part into msg. If it fits in buf (cap
// bytes) and is smaller than keep, it is copied there and msg is closed;
// otherwise it stays in msg (for zmqio_take, or kept) and out->data points
// at its bytes. Returns the part's size, or -1 with out->err set;
// out->more is set when more parts follow.
static int zmqio_recv(void *sock, zmq_msg_t *msg, void *buf, size_t cap, size_t keep, int flags, zmqio_out *out) {
	void *data;
	int n = zmqio_recv_part(sock, msg, flags, &out->err);
	if (n < 0) {
		return -1;
	}
	out->more = zmq_msg_more(msg);
	if ((data = zmqio_settle(msg, n, buf, cap, keep)) != NULL) {
		out->data = data;
	}
	return n;
}

// zmqio_msg_free closes and frees a kept message.
static void zmqio_msg_free(zmq_msg_t *msg) {
	zmq_msg_close(msg);
	free(msg);
}

// zmqio_take copies a part zmqio_recv left in msg to buf, and closes msg.
static void zmqio_take(zmq_msg_t *msg, void *buf) {
	memcpy(buf, zmq_msg_data(msg), zmq_msg_size(msg));
	zmq_msg_close(msg);
}

static int zmqio_getfd(void *sock, int *fd) {
	size_t len = sizeof(*fd);
	return zmq_getsockopt(sock, ZMQ_FD, fd, &len);
}
*/
import "C"

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync/atomic"
	"syscall"
	"unsafe"

	zmq "github.com/pebbe/zmq4"
)

// Receiver receives message parts from one socket into caller buffers. Like
// the socket, it belongs to one goroutine.
type Receiver struct {
	sock *zmq.Socket
	h    unsafe.Pointer
	// msg lives in C memory: libzmq's zmq_msg_t must not be moved or
	// copied between zmq_msg_recv and zmq_msg_close, and a part too big
	// for the caller's buffer waits in it for Take.
	msg *C.zmq_msg_t
	// out receives zmqio_recv's results (C memory, like msg).
	out *C.zmqio_out
	// big is the size of a part waiting in msg, or -1.
	big int
	// scratch serves RecvCopy.
	scratch []byte
}

// copyScratch is the size of RecvCopy's scratch buffer: parts up to it
// take one cgo call.
const copyScratch = 64 << 10

// ErrTooBig is returned by Recv when the part does not fit buf; Size tells
// how big it is, and Take copies it into a buffer of that size.
var ErrTooBig = errors.New("zmqio: message part larger than the buffer")

// NewReceiver makes a Receiver for sock. Close it before closing sock.
func NewReceiver(sock *zmq.Socket) (*Receiver, error) {
	h, err := handle(sock)
	if err != nil {
		return nil, err
	}
	out := (*C.zmqio_out)(C.malloc(C.size_t(unsafe.Sizeof(C.zmqio_out{}))))
	return &Receiver{sock: sock, h: h, msg: newMsg(), out: out, big: -1}, nil
}

// Close frees the receiver (and a part still waiting for Take).
func (r *Receiver) Close() {
	if r.msg == nil {
		return
	}
	if r.big >= 0 {
		C.zmq_msg_close(r.msg)
	}
	C.free(unsafe.Pointer(r.msg))
	C.free(unsafe.Pointer(r.out))
	r.msg, r.out = nil, nil
}

// Recv receives one part into buf[:cap(buf)] and returns it, resliced, and
// whether more parts of the message follow. buf must be an allocation of
// its own, not a field beside Go pointers: cgo's pointer check covers the
// whole object. flags are zmq4's (zmq.DONTWAIT).
// A part bigger than cap(buf) gives ErrTooBig: call Size and Take next.
// Errors are zmq.Errno values, as pebbe/zmq4 returns them.
func (r *Receiver) Recv(buf []byte, flags zmq.Flag) (part []byte, more bool, err error) {
	part, _, more, err = r.RecvKeep(buf, math.MaxInt, flags)
	return part, more, err
}

// RecvKeep is Recv, except that a part of keep bytes or more is not copied:
// it comes back as kept, in libzmq's memory, for the caller to Close.
func (r *Receiver) RecvKeep(buf []byte, keep int, flags zmq.Flag) (part []byte, kept *Msg, more bool, err error) {
	if r.big >= 0 {
		return nil, nil, false, errors.New("zmqio: Recv before Take of a big part")
	}
	buf = buf[:cap(buf)]
	var p unsafe.Pointer
	if len(buf) > 0 {
		p = unsafe.Pointer(&buf[0])
	}
	out := r.out
	n := int(C.zmqio_recv(r.h, r.msg, p, C.size_t(len(buf)), C.size_t(keep), C.int(flags), out))
	if n < 0 {
		return nil, nil, false, zmq.Errno(syscall.Errno(out.err))
	}
	more = out.more != 0
	if n >= keep {
		kept = keepMsg(r.msg, unsafe.Slice((*byte)(out.data), n))
		r.msg = newMsg()
		return nil, kept, more, nil
	}
	if n > len(buf) {
		r.big = n
		return nil, nil, more, ErrTooBig
	}
	return buf[:n], nil, more, nil
}

// Msg is a received part left in libzmq's memory: no copy was made. Its
// bytes are valid until Close, which frees them. A Msg dropped without
// Close is freed once it is unreachable, but whoever uses its bytes must
// hold the Msg: the bytes, in C memory, keep nothing alive.
type Msg struct {
	data []byte
	st   *msgState
}

// msgState is apart from Msg so that the cleanup can reach it while the Msg
// is gone.
type msgState struct {
	msg    *C.zmq_msg_t
	size   int
	closed atomic.Bool
}

func (st *msgState) free() {
	if !st.closed.Swap(true) {
		C.zmqio_msg_free(st.msg)
		noteFreed(st.size)
	}
}

func keepMsg(msg *C.zmq_msg_t, data []byte) *Msg {
	m := &Msg{data: data, st: &msgState{msg: msg, size: len(data)}}
	runtime.AddCleanup(m, (*msgState).free, m.st)
	return m
}

func newMsg() *C.zmq_msg_t {
	return (*C.zmq_msg_t)(C.malloc(C.size_t(unsafe.Sizeof(C.zmq_msg_t{}))))
}

// Bytes are the part's bytes. They must not be used after Close.
func (m *Msg) Bytes() []byte { return m.data }

// Closed reports whether the part was freed.
func (m *Msg) Closed() bool { return m.st.closed.Load() }

// Close frees the part. Later calls do nothing, as does Close of a nil
// Msg; any goroutine may call it.
func (m *Msg) Close() {
	if m != nil {
		m.st.free()
	}
}

// RecvInto is Recv for callers that take any size: a part bigger than buf
// comes in a new slice of its size instead of ErrTooBig.
func (r *Receiver) RecvInto(buf []byte, flags zmq.Flag) (part []byte, more bool, err error) {
	part, more, err = r.Recv(buf, flags)
	if errors.Is(err, ErrTooBig) {
		return r.Take(make([]byte, r.big)), more, nil
	}
	return part, more, err
}

// RecvCopy receives one part into a new slice of its exact size, for
// callers that keep parts (two cgo calls at most, one up to 64 KiB).
func (r *Receiver) RecvCopy(flags zmq.Flag) ([]byte, error) {
	part, _, err := r.RecvCopyKeep(math.MaxInt, flags)
	return part, err
}

// RecvCopyKeep is RecvCopy, except that a part of keep bytes or more is
// not copied: it comes back as kept, in libzmq's memory, for the caller to
// Close.
func (r *Receiver) RecvCopyKeep(keep int, flags zmq.Flag) ([]byte, *Msg, error) {
	if r.scratch == nil {
		r.scratch = make([]byte, copyScratch)
	}
	part, kept, _, err := r.RecvKeep(r.scratch, keep, flags)
	if kept != nil {
		return nil, kept, nil
	}
	if errors.Is(err, ErrTooBig) {
		return r.Take(make([]byte, r.big)), nil, nil // a slice of its own already
	}
	if err != nil {
		return nil, nil, err
	}
	return append([]byte(nil), part...), nil, nil
}

// Size is the size of the part that Recv found too big.
func (r *Receiver) Size() int { return r.big }

// Take copies the part that Recv found too big into buf, which must hold
// Size bytes, and returns it.
func (r *Receiver) Take(buf []byte) []byte {
	if r.big < 0 || cap(buf) < r.big {
		panic("zmqio: Take without a big part, or with a short buffer")
	}
	buf = buf[:r.big]
	var p unsafe.Pointer
	if len(buf) > 0 {
		p = unsafe.Pointer(&buf[0])
	}
	C.zmqio_take(r.msg, p)
	noteLarge(r.big)
	r.big = -1
	return buf
}

// handle returns sock's libzmq socket pointer. pebbe/zmq4 does not export
// it; it is the first field of zmq.Socket. The result is checked against
// the socket's own ZMQ_FD, which is unique per socket, so that a change of
// that layout is an error here, not memory corruption later (libzmq checks
// a tag before using a socket pointer, so a wrong one gives ENOTSOCK).
func handle(sock *zmq.Socket) (unsafe.Pointer, error) {
	want, err := sock.GetFd()
	if err != nil {
		return nil, fmt.Errorf("zmqio: ZMQ_FD: %w", err)
	}
	h := *(*unsafe.Pointer)(unsafe.Pointer(sock))
	var got C.int
	if h == nil || C.zmqio_getfd(h, &got) != 0 || int(got) != want {
		return nil, errors.New("zmqio: cannot reach the libzmq socket of a pebbe/zmq4 Socket (has its layout changed?)")
	}
	return h, nil
}
