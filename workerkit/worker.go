package workerkit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// DefaultMaxConcurrent is the handler bound when Worker.MaxConcurrent is
	// zero: enough to hide ZeroMQ round trips, small enough that one worker
	// does not hoard work that idle workers could do.
	DefaultMaxConcurrent = 64
	// DefaultShutdownTimeout is how long Serve waits for running handlers
	// when Worker.ShutdownTimeout is zero.
	DefaultShutdownTimeout = 30 * time.Second
)

// Worker serves an http.Handler to one or more front ends. The zero value of
// every field but FrontEnds and Handler is a sensible default; a Worker may
// be reused after Serve returns.
type Worker struct {
	// FrontEnds to serve; requests from each are answered through the same
	// front end's reply endpoint.
	FrontEnds []FrontEnd
	// Handler answers every request.
	Handler http.Handler
	// MaxConcurrent bounds the handlers running at once (default
	// DefaultMaxConcurrent, 64). It is also the backpressure: a worker with
	// no free slot stops pulling requests. Requests addressed to this
	// worker over a control channel (REQ, session affinity) wait for a
	// slot too.
	MaxConcurrent int
	// ShutdownTimeout is how long Serve waits for running handlers after its
	// context is done before cancelling their contexts (default 30s).
	ShutdownTimeout time.Duration
	// Logger receives the worker's diagnostics (default slog.Default()).
	Logger *slog.Logger
	// ID identifies the worker on the control channels of its front ends
	// (the ZeroMQ identity of its DEALER sockets, the same on every front
	// end). Empty: each Serve picks a random one, "wk-" and 16 lowercase hex
	// digits (see NewWorkerID), and logs it. Two workers connected to the
	// same front end must not share an ID. At most 255 printable ASCII
	// characters without spaces.
	ID string
	// PinnedSessions, if set, runs each session's requests on one OS
	// thread of its own (see PinnedSessions). Default: off.
	PinnedSessions *PinnedSessions
	// NoInline runs every request on a handler goroutine of its own. By
	// default, while handlers have been cheap lately, a request runs on the
	// goroutine that received it, which saves thread wake-ups; one that
	// turns out slow there holds up the requests behind it for up to about
	// 10 ms, once. Set it for handlers that mix microsecond answers with
	// ones that block, where that delay matters more than CPU.
	NoInline bool

	// serving holds the current run of Serve (a *server), read by Stats
	// (stats.go). An atomic.Value, unlike atomic.Pointer, leaves a Worker
	// copyable before use, as the zero-value literal style invites.
	serving atomic.Value
}

// NewWorkerID returns a random worker id, "wk-" and 16 lowercase hex digits,
// the form Serve uses when Worker.ID is empty. Set it yourself to know the id
// before Serve starts (to log it, or to tell it to the front end's operator).
func NewWorkerID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand panics instead)
	return "wk-" + hex.EncodeToString(b[:])
}

func checkWorkerID(id string) error {
	if id == "" || len(id) > 255 {
		return errors.New("workerkit: Worker.ID must be 1-255 characters")
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c <= ' ' || c >= 0x7f {
			return errors.New("workerkit: Worker.ID " + strconv.Quote(id) + ": only printable ASCII without spaces")
		}
	}
	return nil
}

// Serve is the one-call form for a worker's main: it serves h on the front
// ends (DefaultFrontEnd if none are given) until SIGINT or SIGTERM, then
// finishes the requests it holds and returns. A second signal cancels the
// running handlers' contexts instead of waiting for them.
func Serve(h http.Handler, frontEnds ...FrontEnd) error {
	if len(frontEnds) == 0 {
		frontEnds = []FrontEnd{DefaultFrontEnd}
	}
	w := &Worker{FrontEnds: frontEnds, Handler: h}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	force := make(chan struct{})
	sigc := make(chan os.Signal, 2)
	signal.Notify(sigc, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigc)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 0; ; n++ {
			select {
			case sig := <-sigc:
				if n == 0 {
					w.logger().Info("signal received: finishing in-flight requests (signal again to cancel them)", "signal", sig.String())
					cancel()
				} else {
					close(force)
					return
				}
			case <-done:
				return
			}
		}
	}()
	err := w.serveUntil(ctx, force)
	close(done)
	wg.Wait()
	return err
}

// Serve connects to the front ends and serves requests until ctx is done.
// Then it stops taking work, serves the requests it already holds, waits
// for running handlers (up to ShutdownTimeout) and returns nil; it returns
// an error if it could not start, or if handlers were still running after
// their contexts had been cancelled.
func (w *Worker) Serve(ctx context.Context) error { return w.serveUntil(ctx, nil) }

func (w *Worker) logger() *slog.Logger {
	if w.Logger != nil {
		return w.Logger
	}
	return slog.Default()
}
