package zmqio

/*
#include <zmq.h>
#include <errno.h>
#include <stdlib.h>

// zmqio_keep is set by a thread that closes a message it failed to send:
// the bytes stay the caller's. libzmq frees sent messages on its own
// threads, where it is never set.
static __thread int zmqio_keep;

static void zmqio_free(void *data, void *hint) {
	(void)hint;
	if (!zmqio_keep) {
		free(data);
	}
}

// zmqio_send_owned sends len bytes at data (from malloc) as one part
// without copying them; libzmq frees them once they are sent. If the send
// fails they are still the caller's.
static int zmqio_send_owned(void *sock, void *data, size_t len, int flags, int *err) {
	zmq_msg_t msg;
	int n;
	if (zmq_msg_init_data(&msg, data, len, zmqio_free, NULL) != 0) {
		*err = zmq_errno();
		return -1;
	}
	do {
		n = zmq_msg_send(&msg, sock, flags);
	} while (n < 0 && zmq_errno() == EINTR);
	if (n < 0) {
		*err = zmq_errno();
		zmqio_keep = 1;
		zmq_msg_close(&msg);
		zmqio_keep = 0;
		return -1;
	}
	return n;
}
*/
import "C"

import (
	"syscall"
	"unsafe"

	zmq "github.com/pebbe/zmq4"
)

// CBuf is a buffer in C memory that a message part can be sent from without
// a copy: Go fills it (a read from a connection can land in it directly),
// and SendOwned hands it to libzmq, which frees it once the bytes are on
// the wire. Until then it is the filler's, and Free releases it. Go's
// garbage collector does not see it: every CBuf must end in SendOwned or
// Free.
type CBuf struct {
	p    unsafe.Pointer
	size int
}

// NewCBuf allocates size bytes (size > 0) in C memory.
func NewCBuf(size int) *CBuf {
	p := C.malloc(C.size_t(size))
	if p == nil {
		panic("zmqio: out of C memory")
	}
	return &CBuf{p: p, size: size}
}

// Bytes is the whole buffer. It must not be used after SendOwned succeeded
// or after Free.
func (b *CBuf) Bytes() []byte { return unsafe.Slice((*byte)(b.p), b.size) }

// Free releases a buffer that was not sent. Nil and freed buffers are
// ignored.
func (b *CBuf) Free() {
	if b != nil && b.p != nil {
		C.free(b.p)
		b.p = nil
	}
}

// SendOwned sends the first n bytes of b as one part through sock, which
// only its owner may use. On success b's memory is libzmq's, which frees it
// once sent, and b is empty; on failure b is still the caller's, to send
// again or Free. flags are zmq4's; errors are zmq.Errno values, as
// pebbe/zmq4 returns them.
func SendOwned(sock *zmq.Socket, b *CBuf, n int, flags zmq.Flag) error {
	if b.p == nil || n < 0 || n > b.size {
		panic("zmqio: SendOwned of a freed buffer, or beyond it")
	}
	h, err := handle(sock)
	if err != nil {
		return err
	}
	var cerr C.int
	if C.zmqio_send_owned(h, b.p, C.size_t(n), C.int(flags), &cerr) < 0 {
		return zmq.Errno(syscall.Errno(cerr))
	}
	b.p = nil
	return nil
}
