package zmqio

/*
#include <zmq.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/mman.h>

// CBuf memory comes from mmap, not malloc. libzmq frees a sent CBuf on its
// I/O thread while Go threads allocated it; glibc returns such a block to
// the allocating thread's arena and keeps it there, up to the trim
// threshold per arena and fragmented beyond it, so bursts of large bodies
// left hundreds of MB resident for good. Blocks of
// the standard size are kept in a free list of at most zmqio_cache_max for
// reuse (a fresh block costs a page fault per 4 KiB); everything else goes
// back to the kernel at once. The list is shared by every thread: blocks
// are taken on Go threads and given back on libzmq's.
typedef struct zmqio_block { struct zmqio_block *next; } zmqio_block;

static pthread_mutex_t zmqio_cache_mu = PTHREAD_MUTEX_INITIALIZER;
static zmqio_block *zmqio_cache;
static size_t zmqio_cache_len;
static size_t zmqio_cache_max;
static size_t zmqio_block_size;
static long zmqio_mapped; // blocks mapped now, cached ones included

// Larger blocks (a WebSocket message read straight into its request) are
// mapped in power-of-two sizes from zmqio_large_min up, in
// ZMQIO_LARGE_CLASSES classes, so that a released one serves the next
// message of about its size: a fresh mapping costs a page fault per 4 KiB
// and its unmapping a TLB shootdown, per message. Up to zmqio_large_max
// bytes of them are kept, until zmqio_cbuf_drop_large gives them back.
#define ZMQIO_LARGE_CLASSES 6
static zmqio_block *zmqio_large[ZMQIO_LARGE_CLASSES];
static size_t zmqio_large_cached; // bytes
static long zmqio_large_len;
static size_t zmqio_large_min;
static size_t zmqio_large_max;

static void zmqio_cbuf_config(size_t block, size_t max, size_t large_min, size_t large_max) {
	zmqio_block_size = block;
	zmqio_cache_max = max;
	zmqio_large_min = large_min;
	zmqio_large_max = large_max;
}

// zmqio_large_class is the class of a mapping of size bytes, or -1.
static int zmqio_large_class(size_t size) {
	int c = 0;
	size_t s = zmqio_large_min;
	if (s == 0 || size < s || (size & (size - 1)) != 0) {
		return -1;
	}
	for (; s < size; s <<= 1) {
		c++;
	}
	return c < ZMQIO_LARGE_CLASSES ? c : -1;
}

static void *zmqio_cbuf_alloc(size_t size) {
	int c = zmqio_large_class(size);
	if (c >= 0) {
		pthread_mutex_lock(&zmqio_cache_mu);
		zmqio_block *b = zmqio_large[c];
		if (b != NULL) {
			zmqio_large[c] = b->next;
			zmqio_large_cached -= size;
			zmqio_large_len--;
		}
		pthread_mutex_unlock(&zmqio_cache_mu);
		if (b != NULL) {
			return b;
		}
	}
	if (size == zmqio_block_size) {
		pthread_mutex_lock(&zmqio_cache_mu);
		zmqio_block *b = zmqio_cache;
		if (b != NULL) {
			zmqio_cache = b->next;
			zmqio_cache_len--;
		}
		pthread_mutex_unlock(&zmqio_cache_mu);
		if (b != NULL) {
			return b;
		}
	}
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		return NULL;
	}
	__atomic_add_fetch(&zmqio_mapped, 1, __ATOMIC_RELAXED);
	return p;
}

static void zmqio_cbuf_release(void *p, size_t size) {
	int c = zmqio_large_class(size);
	if (c >= 0) {
		pthread_mutex_lock(&zmqio_cache_mu);
		if (zmqio_large_cached + size <= zmqio_large_max) {
			zmqio_block *b = p;
			b->next = zmqio_large[c];
			zmqio_large[c] = b;
			zmqio_large_cached += size;
			zmqio_large_len++;
			pthread_mutex_unlock(&zmqio_cache_mu);
			return;
		}
		pthread_mutex_unlock(&zmqio_cache_mu);
	}
	if (size == zmqio_block_size) {
		pthread_mutex_lock(&zmqio_cache_mu);
		if (zmqio_cache_len < zmqio_cache_max) {
			zmqio_block *b = p;
			b->next = zmqio_cache;
			zmqio_cache = b;
			zmqio_cache_len++;
			pthread_mutex_unlock(&zmqio_cache_mu);
			return;
		}
		pthread_mutex_unlock(&zmqio_cache_mu);
	}
	munmap(p, size);
	__atomic_sub_fetch(&zmqio_mapped, 1, __ATOMIC_RELAXED);
}

// zmqio_cbuf_drop_large unmaps the cached large blocks.
static void zmqio_cbuf_drop_large(void) {
	for (int c = 0; c < ZMQIO_LARGE_CLASSES; c++) {
		pthread_mutex_lock(&zmqio_cache_mu);
		zmqio_block *b = zmqio_large[c];
		zmqio_large[c] = NULL;
		pthread_mutex_unlock(&zmqio_cache_mu);
		while (b != NULL) {
			zmqio_block *next = b->next;
			size_t size = zmqio_large_min << c;
			munmap(b, size);
			__atomic_sub_fetch(&zmqio_mapped, 1, __ATOMIC_RELAXED);
			pthread_mutex_lock(&zmqio_cache_mu);
			zmqio_large_cached -= size;
			zmqio_large_len--;
			pthread_mutex_unlock(&zmqio_cache_mu);
			b = next;
		}
	}
}

static void zmqio_cbuf_stats(long *mapped, long *cached) {
	pthread_mutex_lock(&zmqio_cache_mu);
	*cached = (long)zmqio_cache_len + zmqio_large_len;
	pthread_mutex_unlock(&zmqio_cache_mu);
	*mapped = __atomic_load_n(&zmqio_mapped, __ATOMIC_RELAXED);
}

// zmqio_keep is set by a thread that closes a message it failed to send:
// the bytes stay the caller's. libzmq frees sent messages on its own
// threads, where it is never set.
static __thread int zmqio_keep;

// zmqio_free is libzmq's free function for a sent CBuf; hint is the size
// of its mapping.
static void zmqio_free(void *data, void *hint) {
	if (!zmqio_keep) {
		zmqio_cbuf_release(data, (size_t)hint);
	}
}

// zmqio_send_owned sends len bytes at data (a CBuf mapping of mapped bytes)
// as one part without copying them; libzmq releases them once they are
// sent. If the send fails they are still the caller's.
static int zmqio_send_owned(void *sock, void *data, size_t len, size_t mapped, int flags, int *err) {
	zmq_msg_t msg;
	int n;
	if (zmq_msg_init_data(&msg, data, len, zmqio_free, (void *)mapped) != 0) {
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
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	zmq "github.com/pebbe/zmq4"
)

// CBuf is a buffer in C memory that a message part can be sent from without
// a copy: Go fills it (a read from a connection can land in it directly),
// and SendOwned hands it to libzmq, which releases it once the bytes are on
// the wire. Until then it is the filler's, and Free releases it. Go's
// garbage collector does not see it: every CBuf must end in SendOwned or
// Free.
//
// The memory is mapped, not malloc'd (see zmqio_cbuf_alloc): buffers of
// CBufBlock bytes or less take a standard block, and up to CBufCacheMax
// released blocks are kept for reuse; larger buffers take a power-of-two
// mapping of CBufLargeMin bytes or more, of which up to CBufLargeCacheMax
// bytes are kept for reuse, until the next drop (dropLargeSoon: about a
// second after the first large allocation since the last drop, so while
// large messages keep coming the cache is emptied once a second); the
// largest buffers, and released blocks beyond those bounds, are unmapped.
// What stays resident after a burst of large bodies is therefore at most
// CBufCacheMax blocks, plus CBufLargeCacheMax bytes for up to a second.
type CBuf struct {
	p    unsafe.Pointer
	size int
}

const (
	// CBufBlock is the standard block: a 512 KiB body part and the head
	// in front of it (the module's BODY messages; workerkit's reply frames,
	// of at most 256 KiB, touch only the first half, and only touched
	// pages are resident).
	CBufBlock = 520 << 10
	// CBufCacheMax bounds the blocks kept for reuse: 32 blocks (16.25 MiB)
	// cover the messages in flight of a few fast streams (8 upload chunks
	// or 16 reply frames at the default 4 MiB window).
	CBufCacheMax = 32
	// CBufLargeMin is the smallest mapping of a buffer larger than a
	// block; they go up by powers of two to CBufLargeMin<<5 (32 MiB: the
	// class a WebSocket message at the module's default 16 MiB limit,
	// plus its head, maps into).
	CBufLargeMin = 1 << 20
	// CBufLargeCacheMax bounds the bytes of large mappings kept for reuse:
	// those of a few sockets exchanging large messages.
	CBufLargeCacheMax = 32 << 20
	cBufLargeClasses  = 6 // ZMQIO_LARGE_CLASSES
)

func init() {
	C.zmqio_cbuf_config(C.size_t(CBufBlock), C.size_t(CBufCacheMax), C.size_t(CBufLargeMin), C.size_t(CBufLargeCacheMax))
}

// NewCBuf allocates size bytes (size > 0) in C memory.
func NewCBuf(size int) *CBuf {
	if size <= 0 {
		panic("zmqio: NewCBuf of a non-positive size")
	}
	m := mappingSize(size)
	p := C.zmqio_cbuf_alloc(C.size_t(m))
	if p == nil {
		panic("zmqio: out of C memory")
	}
	if m >= CBufLargeMin {
		dropLargeSoon()
	}
	return &CBuf{p: p, size: size}
}

// mappingSize is the mapping behind a CBuf of size bytes: a standard block,
// a power of two from CBufLargeMin up, or beyond those size rounded up to
// pages.
func mappingSize(size int) int {
	if size <= CBufBlock {
		return CBufBlock
	}
	if size <= CBufLargeMin<<(cBufLargeClasses-1) {
		m := CBufLargeMin
		for m < size {
			m <<= 1
		}
		return m
	}
	page := syscall.Getpagesize()
	return (size + page - 1) / page * page
}

// dropLargeSoon schedules, unless one is pending, the unmapping of the
// cached large mappings trimDelay later: while large messages flow a
// mapping is reused many times before that, and once they stop, what
// they left goes back to the kernel.
func dropLargeSoon() {
	if !largeDropPending.CompareAndSwap(false, true) {
		return
	}
	time.AfterFunc(largeDropDelay, dropLarge)
}

func dropLarge() {
	largeDropPending.Store(false)
	C.zmqio_cbuf_drop_large()
}

var (
	largeDropPending atomic.Bool
	largeDropDelay   = trimDelay // tests lengthen it
)

// CBufStats reports how many CBuf mappings exist (in use or cached) and how
// many of them are cached for reuse.
func CBufStats() (mapped, cached int) {
	var m, c C.long
	C.zmqio_cbuf_stats(&m, &c)
	return int(m), int(c)
}

// Bytes is the whole buffer. It must not be used after SendOwned succeeded
// or after Free.
func (b *CBuf) Bytes() []byte { return unsafe.Slice((*byte)(b.p), b.size) }

// Free releases a buffer that was not sent. Nil and freed buffers are
// ignored.
func (b *CBuf) Free() {
	if b != nil && b.p != nil {
		C.zmqio_cbuf_release(b.p, C.size_t(mappingSize(b.size)))
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
	if C.zmqio_send_owned(h, b.p, C.size_t(n), C.size_t(mappingSize(b.size)), C.int(flags), &cerr) < 0 {
		return zmq.Errno(syscall.Errno(cerr))
	}
	b.p = nil
	return nil
}
