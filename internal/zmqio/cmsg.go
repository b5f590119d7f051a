package zmqio

/*
#include <zmq.h>
#include <errno.h>
#include <stdlib.h>

static void zmqio_free(void *data, void *hint) {
	(void)hint;
	free(data);
}

// zmqio_send_owned sends len bytes at data (from malloc) as one part
// without copying them. libzmq frees them once they are sent, or here if
// the send fails.
static int zmqio_send_owned(void *sock, void *data, size_t len, int flags, int *err) {
	zmq_msg_t msg;
	int n;
	if (zmq_msg_init_data(&msg, data, len, zmqio_free, NULL) != 0) {
		*err = zmq_errno();
		free(data);
		return -1;
	}
	do {
		n = zmq_msg_send(&msg, sock, flags);
	} while (n < 0 && zmq_errno() == EINTR);
	if (n < 0) {
		*err = zmq_errno();
		zmq_msg_close(&msg);
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
// only its owner may use, and gives b's memory to libzmq: it is freed once
// sent, or at once if the send fails. b is empty afterwards either way.
// flags are zmq4's; errors are zmq.Errno values, as pebbe/zmq4 returns them.
func SendOwned(sock *zmq.Socket, b *CBuf, n int, flags zmq.Flag) error {
	if b.p == nil || n < 0 || n > b.size {
		panic("zmqio: SendOwned of a freed buffer, or beyond it")
	}
	h, err := handle(sock)
	if err != nil {
		b.Free()
		return err
	}
	p := b.p
	b.p = nil
	var cerr C.int
	if C.zmqio_send_owned(h, p, C.size_t(n), C.int(flags), &cerr) < 0 {
		return zmq.Errno(syscall.Errno(cerr))
	}
	return nil
}
