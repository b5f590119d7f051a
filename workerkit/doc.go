// Package workerkit turns any net/http Handler into a worker for a front end
// that speaks Mongrel2's handler protocol over ZeroMQ: the Caddy module of
// this repository, or Mongrel2 itself. Workers connect to the front end, so
// they can be started, stopped and scaled without touching its configuration.
//
// Quick start:
//
//	package main
//
//	import (
//		"io"
//		"log"
//		"net/http"
//
//		"github.com/zmqbridge/caddy-zmq/workerkit"
//	)
//
//	func main() {
//		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
//			io.WriteString(w, "Hello, world!\n")
//		})
//		log.Fatal(workerkit.Serve(h, workerkit.FrontEnd{
//			Requests: "tcp://127.0.0.1:9997", // the front end's PUSH (send_spec)
//			Replies:  "tcp://127.0.0.1:9996", // the front end's SUB (recv_spec)
//		}))
//	}
//
// How it behaves, and why:
//
//   - A worker takes no work from a front end until that front end has
//     subscribed to its replies (it watches subscriptions on an XPUB
//     socket), and pauses while the front end is away, so replies are never
//     published into the void.
//   - At most Worker.MaxConcurrent handlers run at once. The worker stops
//     pulling requests while all slots are busy, so PUSH round-robin at the
//     front end sends the work to idle workers instead.
//   - A response that fits in 64 KiB and is not flushed travels as one
//     message with a Content-Length. Flushing, or writing more, streams it as
//     chunks of at most 256 KiB per message.
//   - A disconnect notice from the front end cancels the request's context.
//   - On shutdown the worker disconnects from the request endpoints, serves
//     what it already received, waits for running handlers (up to
//     Worker.ShutdownTimeout) and then returns.
//
// Not supported: WebSocket (answered 501), Mongrel2's upload streaming and
// HTTP trailers.
package workerkit
