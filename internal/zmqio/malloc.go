package zmqio

/*
#include <stdlib.h>
#if defined(__GLIBC__)
#include <malloc.h>
static int zmqio_tune_malloc(int mmapThreshold, int trimThreshold) {
	return mallopt(M_MMAP_THRESHOLD, mmapThreshold) && mallopt(M_TRIM_THRESHOLD, trimThreshold);
}
#else
static int zmqio_tune_malloc(int mmapThreshold, int trimThreshold) { return 0; }
#endif
*/
import "C"

import (
	"os"
	"strings"
	"sync"

	zmq "github.com/pebbe/zmq4"
)

// Thresholds for glibc's allocator, which libzmq uses for every message
// body. Large bodies travel as 256 KiB frames: under glibc's defaults each
// such frame is either a fresh mmap (128 KiB threshold) or, once the
// threshold has adapted, heap that free trims back to the kernel as soon
// as 512 KiB lie unused at its top. Both make every frame fault in 64 fresh
// pages: measured at about a third of the worker's CPU per GiB of download
// (README, Benchmarks). Keeping frames on the heap, and up to trimThreshold
// of freed heap for the next frames, removes that churn; what is kept is
// bounded by the frames in flight, which the credit window bounds.
const (
	mmapThreshold = 1 << 20
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
