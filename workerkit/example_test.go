package workerkit_test

import (
	"context"
	"io"
	"log"
	"net/http"
	"os/signal"
	"syscall"
	"time"

	"github.com/zmqbridge/caddy-zmq/workerkit"
)

// The one-call form: serve a handler until SIGINT or SIGTERM.
func ExampleServe() {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "Hello, world!\n")
	})
	log.Fatal(workerkit.Serve(h, workerkit.FrontEnd{
		Requests: "tcp://127.0.0.1:9997", // the front end's PUSH (Mongrel2 send_spec)
		Replies:  "tcp://127.0.0.1:9996", // the front end's SUB (Mongrel2 recv_spec)
	}))
}

// The library form: several front ends, a tighter concurrency bound and
// shutdown driven by the caller's context.
func ExampleWorker_Serve() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	w := &workerkit.Worker{
		FrontEnds: []workerkit.FrontEnd{
			{Requests: "tcp://10.0.0.1:9997", Replies: "tcp://10.0.0.1:9996"},
			{Requests: "tcp://10.0.0.2:9997", Replies: "tcp://10.0.0.2:9996"},
		},
		Handler:         http.FileServer(http.Dir("/srv/www")),
		MaxConcurrent:   16,
		ShutdownTimeout: 10 * time.Second,
	}
	if err := w.Serve(ctx); err != nil {
		log.Fatal(err)
	}
}
