// Command pinned is a workerkit worker whose sessions each run on one OS
// thread of their own (workerkit.PinnedSessions), and which proves it: every
// answer names the worker, the OS thread (gettid) and a C thread-local
// counter, which counts the session's requests only if they all ran on
// that thread since it started.
//
//	GET /        {"worker","pid","tid","session","pinned","fresh","count","broadcast"}
//	GET /end     the same, then ends the session (its thread exits)
//	GET /panic   panics: 500, and the session's thread exits
//	?sleep=D     on any path: wait D (a Go duration) first, or until the
//	             request is cancelled (for the broadcast tests)
//
// The session is the front end's affinity key (Caddyfile: affinity header
// X-Session, or a cookie); requests without one run on any thread.
//
//	pinned -frontend tcp://127.0.0.1:9997,tcp://127.0.0.1:9996,tcp://127.0.0.1:9995 -max-threads 64 -idle 30s
//
// With -curve-server-key and -curve-key it speaks CURVE, as the other
// example workers (docs/security.md).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"log"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/zmqbridge/caddy-zmq/workerkit"
)

// The main goroutine keeps the main thread: Go cannot end the main thread
// when a session on it ends, so no session must run there.
func init() { runtime.LockOSThread() }

// answer is what every request gets.
type answer struct {
	Worker  string `json:"worker"`
	PID     int    `json:"pid"`
	TID     int    `json:"tid"`
	Session string `json:"session,omitempty"`
	Pinned  bool   `json:"pinned"`
	// Fresh: the first request on this thread (new session, or its
	// previous thread ended).
	Fresh bool `json:"fresh"`
	// Count is the thread's C thread-local counter after this request.
	Count int64 `json:"count"`
	// Broadcast: the request is one of a scatter-gather.
	Broadcast bool `json:"broadcast"`
}

// handler answers for the worker named id.
func handler(id string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if d, err := time.ParseDuration(r.URL.Query().Get("sleep")); err == nil && d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				return
			}
		}
		a := answer{Worker: id, PID: os.Getpid(), TID: syscall.Gettid(), Count: countCall()}
		_, a.Broadcast = workerkit.BroadcastFromContext(r.Context())
		s := workerkit.SessionFromContext(r.Context())
		if s != nil {
			a.Session, a.Pinned, a.Fresh = s.Key(), true, s.Fresh()
		}
		switch r.URL.Path {
		case "/panic":
			panic("pinned: /panic asked for it")
		case "/end":
			if s != nil {
				s.End()
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(a)
	})
}

// options is what the command line says.
type options struct {
	frontEnds workerkit.FrontEndList
	id        string
	pinned    workerkit.PinnedSessions
	maxConc   int
}

// parseFlags reads args (without the program name) into options, the
// front ends with their CURVE keys when -curve-server-key is given, as the
// other example workers do.
func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("pinned", flag.ContinueOnError)
	fs.Var(&o.frontEnds, "frontend", workerkit.FrontEndUsage)
	fs.Var(o.frontEnds.Bind(), "bind", workerkit.BindUsage)
	fs.StringVar(&o.id, "id", "", "worker `ID` on control channels (default: random)")
	fs.IntVar(&o.pinned.MaxThreads, "max-threads", workerkit.DefaultMaxPinnedThreads, "pinned session threads at most")
	fs.DurationVar(&o.pinned.IdleTimeout, "idle", workerkit.DefaultPinnedIdleTimeout, "a session idle this long ends, with its thread")
	fs.DurationVar(&o.pinned.Wait, "wait", workerkit.DefaultPinnedSessionWait, "how long a new session waits for a thread before 503")
	fs.IntVar(&o.maxConc, "max-concurrent", workerkit.DefaultMaxConcurrent, "handlers running (or queued on a session) at once")
	var curve workerkit.CurveFlags
	curve.Register(fs)
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if len(o.frontEnds) == 0 {
		o.frontEnds = workerkit.FrontEndList{workerkit.DefaultFrontEnd}
	}
	if o.id == "" {
		o.id = workerkit.NewWorkerID()
	}
	return o, curve.Apply(o.frontEnds)
}

func main() {
	o, err := parseFlags(os.Args[1:])
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	w := &workerkit.Worker{
		FrontEnds: o.frontEnds, Handler: handler(o.id), MaxConcurrent: o.maxConc, ID: o.id,
		PinnedSessions: &o.pinned,
	}
	if err := w.Serve(ctx); err != nil {
		log.Fatal(err)
	}
}
