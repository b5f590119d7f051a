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

var tuneOnce sync.Once

// TuneMalloc sets glibc's malloc thresholds for libzmq's large message
// bodies (see mmapThreshold) once per process. It leaves them alone when
// the user set either threshold (GLIBC_TUNABLES, or glibc's older
// MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_), and does nothing on a
// C library other than glibc. It reports whether it changed them.
func TuneMalloc() bool {
	changed := false
	tuneOnce.Do(func() {
		if userTunedMalloc(os.Environ()) {
			return
		}
		changed = C.zmqio_tune_malloc(C.int(mmapThreshold), C.int(trimThreshold)) != 0
	})
	return changed
}

// userTunedMalloc reports whether env sets one of the thresholds
// TuneMalloc would set.
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
