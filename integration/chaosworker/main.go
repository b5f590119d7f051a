// Command chaosworker is the worker of the fault-injection suite
// (integration/chaos): a workerkit worker that records every request it runs
// in a log file, so that the suite can count requests executed more than
// once across workers, and that can be made to hang.
//
// Usage:
//
//	chaosworker -frontend REQUESTS,REPLIES[,CONTROL] -exec-log FILE [-id ID] [-work 5ms] [-hung]
//
// Endpoints (any other path: 404):
//
//	GET  /get?id=N    \ log "START <method> <id>", do -work of work, log
//	POST /post?id=N   / "EXEC <method> <id>", answer 200 "ok <id>\n"
//
// "EXEC" is the request's side effect: it is written after the work, only
// if the request's context is still live (a handler whose client left does
// not commit). Each line is one write(2) on a file opened with O_APPEND and
// no buffering in between, so a line written survives a SIGKILL of the
// worker and lines of concurrent handlers never interleave.
//
// Hung mode (-hung, or toggled at any time with SIGUSR1): handlers still
// start (the worker takes the request and acknowledges it on the control
// channel) and log "START", but never answer: they block until the request's
// context is cancelled (the front end's DISCONNECT after its reply_timeout,
// or the worker's hard shutdown), then return without a reply.
//
// -stop-at-start N (for reproductions): the worker stops itself (SIGSTOP)
// right after logging START for request id N; SIGCONT resumes it.
//
// Every response carries X-Worker: <id>. SIGTERM/SIGINT drain (workerkit:
// stop taking work, finish what is held, exit).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/zmqbridge/caddy-zmq/workerkit"
)

func main() {
	var fes workerkit.FrontEndList
	flag.Var(&fes, "frontend", workerkit.FrontEndUsage)
	id := flag.String("id", "", "worker id on the control channel and in X-Worker (default: a random one)")
	execLog := flag.String("exec-log", "", "append START/EXEC lines to this `file` (required)")
	work := flag.Duration("work", 5*time.Millisecond, "time each request works before its side effect")
	hung := flag.Bool("hung", false, "start hung (SIGUSR1 toggles)")
	maxConc := flag.Int("max-concurrent", 0, "handlers running at once (0: workerkit's default)")
	shutdown := flag.Duration("shutdown-timeout", 5*time.Second, "how long a drain waits for running handlers")
	stopAt := flag.String("stop-at-start", "", "SIGSTOP this process right after request `id` started (reproductions)")
	var curve workerkit.CurveFlags
	curve.Register(flag.CommandLine)
	flag.Parse()
	if *execLog == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "chaosworker: -exec-log is required; no arguments")
		os.Exit(2)
	}
	if len(fes) == 0 {
		fes = workerkit.FrontEndList{workerkit.DefaultFrontEnd}
	}
	if err := curve.Apply(fes); err != nil {
		fmt.Fprintln(os.Stderr, "chaosworker:", err)
		os.Exit(2)
	}
	if *id == "" {
		*id = workerkit.NewWorkerID()
	}
	f, err := os.OpenFile(*execLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaosworker:", err)
		os.Exit(1)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))

	h := &handler{id: *id, log: f, work: *work, stopAt: *stopAt}
	h.hung.Store(*hung)
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	go func() {
		for range usr1 {
			now := !h.hung.Load()
			h.hung.Store(now)
			logger.Info("hung mode toggled", "hung", now)
		}
	}()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	w := &workerkit.Worker{
		FrontEnds:       fes,
		Handler:         h,
		MaxConcurrent:   *maxConc,
		ShutdownTimeout: *shutdown,
		Logger:          logger,
		ID:              *id,
	}
	logger.Info("chaosworker serving", "id", *id, "hung", h.hung.Load(), "work", *work)
	if err := w.Serve(ctx); err != nil {
		logger.Error("serve", "err", err)
		os.Exit(1)
	}
}

type handler struct {
	id   string
	log  *os.File
	work time.Duration
	hung atomic.Bool
	// stopAt: the request id after whose START the process stops itself.
	stopAt string
}

// record writes one line with a single write(2) (O_APPEND: atomic for
// lines this short, and in the kernel as soon as the call returns).
func (h *handler) record(verb, method, id string) {
	b := make([]byte, 0, 32)
	b = append(b, verb...)
	b = append(b, ' ')
	b = append(b, method...)
	b = append(b, ' ')
	b = append(b, id...)
	b = append(b, '\n')
	if _, err := h.log.Write(b); err != nil {
		fmt.Fprintln(os.Stderr, "chaosworker: writing the exec log:", err)
		os.Exit(1) // losing lines would make the suite's counts wrong
	}
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Worker", h.id)
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/get",
		r.Method == http.MethodPost && r.URL.Path == "/post":
	default:
		http.NotFound(w, r)
		return
	}
	id := r.URL.Query().Get("id")
	if _, err := strconv.ParseUint(id, 10, 64); err != nil {
		http.Error(w, "bad id", http.StatusBadRequest)
		return
	}
	_, _ = io.Copy(io.Discard, r.Body)
	h.record("START", r.Method, id)
	if id == h.stopAt {
		_ = syscall.Kill(os.Getpid(), syscall.SIGSTOP)
	}
	ctx := r.Context()
	if h.hung.Load() {
		<-ctx.Done()
		return
	}
	if h.work > 0 {
		t := time.NewTimer(h.work)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
	if ctx.Err() != nil {
		return
	}
	h.record("EXEC", r.Method, id)
	w.Header().Set("Content-Type", "text/plain")
	_, _ = io.WriteString(w, "ok "+id+"\n")
}
