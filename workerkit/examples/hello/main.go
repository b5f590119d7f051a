// Command hello is the smallest workerkit worker: it answers every request
// with "Hello, world!". With -http it serves the same handler with plain
// net/http instead, so the two transports can be benchmarked side by side.
//
//	hello                                                  # connects to the default front end (9997/9996)
//	hello -frontend tcp://10.0.0.1:9997,tcp://10.0.0.1:9996,tcp://10.0.0.1:9995
//	hello -bind tcp://*:7001,tcp://*:7002                  # front ends connect to us (Caddy: to ... lines)
//
// -frontend and -bind may be repeated and combined; -bind X,Y is the same as
// -frontend bind:X,Y.
package main

import (
	"context"
	"flag"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/zmqbridge/caddy-zmq/workerkit"
)

func hello(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, "Hello, world!\n")
}

func main() {
	var frontEnds workerkit.FrontEndList
	flag.Var(&frontEnds, "frontend", workerkit.FrontEndUsage)
	flag.Var(frontEnds.Bind(), "bind", workerkit.BindUsage)
	httpAddr := flag.String("http", "", "serve with plain net/http on `ADDR` instead (for benchmarks)")
	maxConc := flag.Int("max-concurrent", workerkit.DefaultMaxConcurrent, "handlers running at once (ZeroMQ mode)")
	var curve workerkit.CurveFlags
	curve.Register(flag.CommandLine)
	debugAddr := flag.String("debug", "", "serve the worker's own counters (workerkit.Stats) as JSON on `ADDR`, e.g. 127.0.0.1:6060")
	flag.Parse()

	handler := http.HandlerFunc(hello)
	if *httpAddr != "" {
		if err := workerkit.ListenAndServeHTTP(*httpAddr, handler); err != nil {
			log.Fatal(err)
		}
		return
	}
	if len(frontEnds) == 0 {
		frontEnds = workerkit.FrontEndList{workerkit.DefaultFrontEnd}
	}
	if err := curve.Apply(frontEnds); err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	w := &workerkit.Worker{FrontEnds: frontEnds, Handler: handler, MaxConcurrent: *maxConc}
	if *debugAddr != "" {
		go func() {
			if err := workerkit.ServeDebug(ctx, *debugAddr, w); err != nil {
				log.Printf("debug address: %v", err)
			}
		}()
	}
	if err := w.Serve(ctx); err != nil {
		log.Fatal(err)
	}
}
