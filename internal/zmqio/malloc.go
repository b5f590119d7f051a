package zmqio

/*
#include <stdlib.h>
#if defined(__GLIBC__)
#include <malloc.h>
static int zmqio_tune_malloc(int mmapThreshold, int trimThreshold) {
	return mallopt(M_MMAP_THRESHOLD, mmapThreshold) && mallopt(M_TRIM_THRESHOLD, trimThreshold);
}
static void zmqio_trim(void) { malloc_trim(0); }
#else
static int zmqio_tune_malloc(int mmapThreshold, int trimThreshold) { return 0; }
static void zmqio_trim(void) {}
#endif
*/
import "C"

import (
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	zmq "github.com/pebbe/zmq4"
)

// Thresholds for glibc's allocator, which libzmq uses for every message
// body. Large bodies travel as 256 KiB frames: under glibc's defaults each
// such frame is either a fresh mmap (128 KiB threshold) or, once the
// threshold has adapted, heap that free trims back to the kernel as soon
// as 512 KiB lie unused at its top. Both make every frame fault in 64 fresh
// pages, a large part of a worker's CPU in a download. Keeping frames on
// the heap, and up to trimThreshold
// of freed heap for the next frames, removes that churn; what is kept is
// bounded by the frames in flight, which the credit window bounds.
//
// Messages that cannot be cut into frames (a WebSocket message is one
// Mongrel2 request, up to 16 MiB by default) stay on the heap too:
// mmapThreshold is the largest value glibc accepts on 64-bit systems.
// Under a lower one every such message was mapped, faulted in page by
// page and unmapped by libzmq on both sides of the hop, which cost more
// CPU than everything else a WebSocket echo of large messages does. What
// such messages leave in the heap is given back by the trims that
// noteLarge schedules.
const (
	mmapThreshold = 32 << 20
	trimThreshold = 16 << 20
)

// NewContext makes a libzmq context, the first time in the process after
// setting glibc's malloc thresholds for libzmq's large frames (see
// mmapThreshold) unless the user set them.
func NewContext() (*zmq.Context, error) {
	tuneOnce.Do(func() { tuneMalloc(os.Environ()) })
	return zmq.NewContext()
}

var tuneOnce sync.Once

// tuneMalloc sets the thresholds unless env sets either of them
// (GLIBC_TUNABLES, or glibc's older MALLOC_MMAP_THRESHOLD_ and
// MALLOC_TRIM_THRESHOLD_); it does nothing on a C library other than glibc.
// It reports whether it set them.
func tuneMalloc(env []string) bool {
	if userTunedMalloc(env) {
		return false
	}
	return C.zmqio_tune_malloc(C.int(mmapThreshold), C.int(trimThreshold)) != 0
}

// userTunedMalloc reports whether env sets one of the thresholds
// tuneMalloc would set.
func userTunedMalloc(env []string) bool {
	for _, kv := range env {
		name, value, _ := strings.Cut(kv, "=")
		switch name {
		case "GLIBC_TUNABLES":
			if strings.Contains(value, "glibc.malloc.mmap_threshold") || strings.Contains(value, "glibc.malloc.trim_threshold") {
				return true
			}
		case "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_":
			return true
		}
	}
	return false
}

// The thresholds keep freed frames for reuse, but only at the top of each
// heap: a burst of large bodies that ends (many clients leaving their
// downloads at once, each with frames in flight) frees hundreds of MB in
// the middle of libzmq's heap, which glibc then keeps for good. So once
// trimAfter bytes of kept parts (RecvKeep) were freed, a trim is scheduled
// trimDelay later: malloc_trim gives every free page of every arena back.
// At most one is pending, so while bodies stream that is one trim a
// second: the pages it gives back fault in again when reused, once a
// second at most, where trimming after every frame would fault in every
// frame (what mmapThreshold and trimThreshold are there to avoid).
const (
	trimAfter = 4 << 20
	trimDelay = time.Second
)

var (
	freedSinceTrim atomic.Int64
	trimPending    atomic.Bool
	trims          atomic.Int64 // done so far, for tests
)

// noteFreed counts n bytes of libzmq's heap given back by a kept part.
func noteFreed(n int) {
	if freedSinceTrim.Add(int64(n)) < trimAfter || !trimPending.CompareAndSwap(false, true) {
		return
	}
	time.AfterFunc(trimDelay, func() {
		freedSinceTrim.Store(0)
		C.zmqio_trim()
		trims.Add(1)
		trimPending.Store(false)
	})
}
