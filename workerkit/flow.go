package workerkit

import (
	"context"
	"math"
	"sync/atomic"
	"time"
)

// minCreditChunk is the credit a flow-controlled reply waits for before it
// sends what fits (see flow.await).
const minCreditChunk = 16 << 10

// flow is the reply credit of one windowed request. Only the handler's
// goroutine takes credit; the control owner grants it.
//
// The front end grants credit in batches of at least a quarter window. A
// writer that waited for room for a whole 256 KiB frame could wait forever:
// with, say, 10 KiB outstanding (less than a batch) and a window of 256 KiB
// nothing more is granted. So the response writer cuts its frames to the
// credit it has, and waits only while the credit is below low, which is at
// most half the window: then at least half a window is outstanding, which
// the front end grants back as the client reads it.
type flow struct {
	window int64
	low    int64 // wait while the credit is below this
	credit atomic.Int64
	lifted atomic.Bool
	wake   chan struct{} // capacity 1: credit was granted, or the flow lifted
	// stalls, if set, counts the waits for credit (Worker.Stats).
	stalls *stallCounter
}

func newFlow(window int64) *flow {
	f := &flow{window: window, low: max(1, min(minCreditChunk, window/2)), wake: make(chan struct{}, 1)}
	f.credit.Store(window)
	return f
}

func (f *flow) grant(n int64) {
	f.credit.Add(n)
	f.signal()
}

func (f *flow) lift() {
	f.lifted.Store(true)
	f.signal()
}

func (f *flow) signal() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// testHookFlowBlocked, when set by tests, is called when a reply waits for
// credit.
var testHookFlowBlocked func(connCredit, need int64)

// await waits until the credit is at least f.low and returns it (a lower
// bound: only grants happen meanwhile), or math.MaxInt64 once lifted.
func (f *flow) await(ctx context.Context, dead <-chan struct{}) (int64, error) {
	return f.wait(ctx, dead, f.low)
}

// take waits until n body bytes may be sent and takes them from the credit.
// A frame larger than the window waits for the whole window.
func (f *flow) take(ctx context.Context, dead <-chan struct{}, n int64) error {
	if n <= 0 {
		return nil
	}
	if _, err := f.wait(ctx, dead, min(n, f.window)); err != nil {
		return err
	}
	f.credit.Add(-n)
	return nil
}

func (f *flow) wait(ctx context.Context, dead <-chan struct{}, need int64) (int64, error) {
	var stalledAt time.Time // zero while it has not waited
	for {
		if f.lifted.Load() {
			f.stalls.end(stalledAt)
			return math.MaxInt64, nil
		}
		c := f.credit.Load()
		if c >= need {
			f.stalls.end(stalledAt)
			return c, nil
		}
		if testHookFlowBlocked != nil {
			testHookFlowBlocked(c, need)
		}
		if stalledAt.IsZero() && f.stalls != nil {
			stalledAt = time.Now()
			f.stalls.n.Add(1)
		}
		select {
		case <-f.wake:
		case <-ctx.Done():
			f.stalls.end(stalledAt)
			return 0, errClientGone
		case <-dead:
			f.stalls.end(stalledAt)
			return 0, errWorkerStopped
		}
	}
}

// stallCounter counts the waits for reply credit and the time spent in
// them (Worker.Stats).
type stallCounter struct {
	n, nanos atomic.Int64
}

// end adds the wait that began at since, if any; a nil counter counts
// nothing.
func (s *stallCounter) end(since time.Time) {
	if s != nil && !since.IsZero() {
		s.nanos.Add(int64(time.Since(since)))
	}
}
