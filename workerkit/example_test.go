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

// Server-sent events with a Group: the handler joins and returns, and every
// Broadcast reaches every listener, one reply frame per 128 of them.
func ExampleGroup() {
	var listeners workerkit.Group
	mux := http.NewServeMux()
	mux.HandleFunc("GET /events", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		io.WriteString(w, ": joined\n\n") // sent with the head: the client sees the stream open
		if err := listeners.Join(w, r); err != nil {
			log.Print(err) // the response ends when we return; EventSource reconnects
		}
	})
	go func() {
		for t := range time.Tick(time.Second) {
			listeners.Broadcast([]byte("data: " + t.Format(time.RFC3339) + "\n\n"))
		}
	}()
	log.Fatal(workerkit.Serve(mux, workerkit.FrontEnd{
		Requests: "tcp://127.0.0.1:9997",
		Replies:  "tcp://127.0.0.1:9996",
		Control:  "tcp://127.0.0.1:9995", // optional: flow control, liveness, prompt disconnects
	}))
}
