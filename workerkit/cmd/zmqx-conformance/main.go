// Command zmqx-conformance checks a worker, written in any language, against
// the zmqx/1 protocol (docs/zmqx.md): it plays the front end, binding the
// request (PUSH), reply (SUB) and control (ROUTER) sockets, runs the
// protocol's cases, prints a PASS/FAIL table and exits 1 if a case failed.
//
// Either give it the worker's command line, in which {requests}, {replies}
// and {control} stand for the endpoints (the kit starts the worker, and stops
// it with SIGTERM for the drain case):
//
//	zmqx-conformance -- bin/hello-worker -frontend {requests},{replies},{control}
//	zmqx-conformance -big-path '/big?bytes=1048576' -upload-path /upload -- bin/echo-worker -frontend {requests},{replies},{control}
//	zmqx-conformance -- python3 handler.py --requests {requests} --replies {replies}
//
// or start the worker yourself: the kit prints the endpoints to connect it to
// (or binds those given with -requests, -replies and -control) and waits
// -wait for it.
//
// A worker that never connects to the control endpoint (a plain Mongrel2
// handler) passes or fails the Mongrel2 cases, and the zmqx cases report "NO
// CONTROL CHANNEL" rather than failing.
//
// Exit status: 0 all cases passed (or were not applicable), 1 a case failed,
// 2 the kit could not run.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/zmqbridge/caddy-zmq/workerkit/conformance"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("zmqx-conformance", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg conformance.Config
	fs.StringVar(&cfg.Requests, "requests", "", "endpoint to bind the request socket (PUSH) on; default a free port on 127.0.0.1")
	fs.StringVar(&cfg.Replies, "replies", "", "endpoint to bind the reply socket (SUB) on; default a free port")
	fs.StringVar(&cfg.Control, "control", "", "endpoint to bind the control socket (ROUTER) on; default a free port")
	fs.StringVar(&cfg.SenderID, "sender", "", "sender id (UUID) of the requests; default zmqx-conformance")
	fs.StringVar(&cfg.Path, "path", "/", "GET path whose response has a non-empty body")
	fs.StringVar(&cfg.BigPath, "big-path", "", "GET path with a large response, for the credit case; default -path")
	fs.StringVar(&cfg.HoldPath, "hold-path", "", "GET path whose handler waits until its request is cancelled; default: hold requests by withholding credit")
	fs.StringVar(&cfg.UploadPath, "upload-path", "", "POST path whose handler reads the whole body, for the upload case; default -path")
	fs.DurationVar(&cfg.Timeout, "timeout", 10*time.Second, "how long to wait for anything the worker must do")
	fs.DurationVar(&cfg.Quiet, "quiet", 500*time.Millisecond, "how long to watch for anything the worker must not do")
	fs.DurationVar(&cfg.ControlWait, "control-wait", 2*time.Second, "how long to wait for HELLO after the first reply before reporting no control channel")
	wait := fs.Duration("wait", time.Minute, "without a worker command: how long to wait for the worker to connect")
	cases := fs.String("cases", "", "comma-separated cases to run; default all: "+strings.Join(conformance.CaseNames(), ","))
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: zmqx-conformance [flags] [-- worker command with {requests} {replies} {control}]\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *cases != "" {
		cfg.Cases = strings.Split(*cases, ",")
	}
	ctx, stopSignals := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stopSignals()

	kit, err := conformance.Start(cfg)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	defer kit.Close()
	ep := kit.Endpoints()
	fmt.Fprintf(stdout, "requests %s\nreplies  %s\ncontrol  %s\n", ep.Requests, ep.Replies, ep.Control)

	if argv := fs.Args(); len(argv) > 0 {
		w, err := startWorker(argv, ep, stderr)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 2
		}
		defer w.stop()
		kit.SetStop(w.stop)
	} else {
		fmt.Fprintf(stdout, "connect the worker to these endpoints (e.g. -frontend %s,%s,%s); waiting %s\n",
			ep.Requests, ep.Replies, ep.Control, *wait)
		kit.SetWorkerWait(*wait)
	}
	rep := kit.Run(ctx)
	fmt.Fprint(stdout, rep.Table())
	if rep.Failed() {
		return 1
	}
	return 0
}

// worker is the process under test.
type worker struct {
	cmd  *exec.Cmd
	done chan struct{}
	once sync.Once
}

func startWorker(argv []string, ep conformance.Endpoints, out io.Writer) (*worker, error) {
	r := strings.NewReplacer("{requests}", ep.Requests, "{replies}", ep.Replies, "{control}", ep.Control)
	args := make([]string, len(argv))
	for i, a := range argv {
		args[i] = r.Replace(a)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the worker: %w", err)
	}
	w := &worker{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(w.done) }()
	return w, nil
}

// stopGrace is how long the worker may take to drain after SIGTERM.
const stopGrace = 30 * time.Second

// stop asks the worker to drain (SIGTERM to its process group), and kills
// the group if it has not exited within stopGrace.
func (w *worker) stop() {
	w.once.Do(func() {
		pg := -w.cmd.Process.Pid
		_ = syscall.Kill(pg, syscall.SIGTERM)
		t := time.NewTimer(stopGrace)
		defer t.Stop()
		select {
		case <-w.done:
		case <-t.C:
		}
		_ = syscall.Kill(pg, syscall.SIGKILL)
	})
	<-w.done
}
