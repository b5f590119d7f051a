// The receive steps shared by zmqio_recv (recv.go) and zmqio_recv_user
// (meta.go): each cgo preamble is its own C unit, so they live here.
#include <zmq.h>
#include <errno.h>
#include <string.h>

// zmqio_recv_part receives one message part into msg, retrying on EINTR.
// Returns its size, or -1 with *err set and msg closed.
static inline int zmqio_recv_part(void *sock, zmq_msg_t *msg, int flags, int *err) {
	int n;
	zmq_msg_init(msg);
	do {
		n = zmq_msg_recv(msg, sock, flags);
	} while (n < 0 && zmq_errno() == EINTR);
	if (n < 0) {
		*err = zmq_errno();
		zmq_msg_close(msg);
	}
	return n;
}

// zmqio_settle copies a part of n bytes into buf and closes msg when it fits
// (cap bytes) and is smaller than keep, and returns NULL; otherwise the part
// stays in msg and its bytes are returned.
static inline void *zmqio_settle(zmq_msg_t *msg, int n, void *buf, size_t cap, size_t keep) {
	if ((size_t)n <= cap && (size_t)n < keep) {
		if (n > 0) {
			memcpy(buf, zmq_msg_data(msg), (size_t)n);
		}
		zmq_msg_close(msg);
		return NULL;
	}
	return zmq_msg_data(msg);
}

// zmqio_copy_meta copies msg's metadata property name into dst (at most cap
// bytes) and returns its length, or -1 when the part has none.
static inline int zmqio_copy_meta(zmq_msg_t *msg, const char *name, char *dst, size_t cap) {
	const char *v = zmq_msg_gets(msg, name);
	size_t l;
	if (v == NULL) {
		return -1;
	}
	l = strlen(v);
	if (l > cap) {
		l = cap;
	}
	memcpy(dst, v, l);
	return (int)l;
}
