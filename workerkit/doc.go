// Package workerkit turns any net/http Handler into a worker for a front end
// that speaks Mongrel2's handler protocol over ZeroMQ: the Caddy module of
// this repository, or Mongrel2 itself. Workers connect to the front end, so
// they can be started, stopped and scaled without touching its configuration
// (or, in bind mode, the front ends connect to them: see below).
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
//     pulling requests while all slots are busy (one request waits for a
//     slot, the rest stay in the socket's small queue), so PUSH round-robin
//     at the front end sends the work to idle workers instead.
//   - While handlers have been cheap lately (a moving average of their run
//     times), a request that needs no ACK over a control channel runs on
//     the goroutine that received it, which also
//     sends its reply: one goroutine per request instead of three, which
//     saves thread wake-ups. A handler that turns out slow there loses the
//     request socket to another goroutine within about 10 ms, and slow
//     handlers run on goroutines of their own, as always (inline.go).
//   - A response that fits in 64 KiB and is not flushed travels as one
//     message with a Content-Length. Flushing, or writing more, streams it as
//     chunks of at most 256 KiB per message.
//   - A disconnect notice from the front end cancels the request's context.
//   - On shutdown the worker disconnects from the request endpoints, serves
//     what it already received, waits for running handlers (up to
//     Worker.ShutdownTimeout) and then returns.
//
// # Control channel
//
// A front end that has a control endpoint (the Caddy module's
// control_endpoint; Mongrel2 has none) is configured with a third endpoint:
//
//	workerkit.FrontEnd{Requests: "tcp://127.0.0.1:9997", Replies: "tcp://127.0.0.1:9996", Control: "tcp://127.0.0.1:9995"}
//	-frontend tcp://127.0.0.1:9997,tcp://127.0.0.1:9996,tcp://127.0.0.1:9995
//
// The worker then connects one more socket (a DEALER whose identity is
// Worker.ID) to it and speaks the zmqx/1 extension:
//
//   - HELLO <max_concurrent> when the connection comes up, HB every 250 ms
//     (the front end knows at once when a worker dies or freezes), and BYE
//     when the worker starts draining. The connection counts as up once the
//     front end answers the HELLO (WELCOME): until then ACKs are held and no
//     request is taken from that front end, since a front end may not read
//     a connection (with CURVE, a second one under the worker's id while the
//     old one lingers); a front end that predates WELCOME is recognised
//     after zmqx.WelcomeWait and served as before.
//   - For every request that carries ZMQX_WINDOW (the front end sets it when
//     its control channel is on), the worker sends ACK <conn_id> as the
//     handler starts, so the front end knows who holds the request. ACKs of
//     requests that start together go out as one message, ACK <id> <id> ...;
//     a lone ACK is never held back to wait for company.
//   - DISCONNECT <conn_id> cancels that request's context, as the Mongrel2
//     notice does.
//   - Reply flow control: the reply of a windowed request may have at most
//     the window (ZMQX_WINDOW bytes) sent and not yet written to the client.
//     Before each reply message the response writer waits for enough credit,
//     which the front end grants (CREDIT <conn_id> <bytes>) as the client
//     reads. A handler writing a huge body to a slow client blocks in Write
//     instead of filling the worker's memory, and Write or Flush fail as soon
//     as the client goes away. If the control connection breaks, the waiting
//     replies go on without flow control (no more credit could come).
//   - If the control connection is not up when a windowed request starts
//     (the first instant after startup, or a front end restarting), the
//     request is served without ACK and flow control, as by a worker
//     without control channel; the worker waits up to a second for it before
//     it takes its first requests from a front end. A request that also
//     carries a dispatch deadline is dropped instead (see below).
//   - REQ <request frame>: the front end addresses a request to this worker
//     (session affinity: the session is pinned to the worker that served its
//     first request). It is handled exactly as one from the front end's
//     request socket: the reply goes to the same reply socket, ACK, credit
//     and DISCONNECT work the same, and so does the Mongrel2 disconnect
//     notice if it comes this way. It counts against MaxConcurrent: with no
//     free slot it waits for one (it is not refused, as no other worker
//     holds the session), and a DISCONNECT while it waits drops it. Requests
//     addressed to a worker that is shutting down are dropped once it has
//     served what arrived until shortly after its BYE.
//   - Streamed uploads: a request whose body is large (or of unknown length)
//     comes with ZMQX_BODY: stream and no inline body; once the worker has
//     acknowledged it, the front end sends the body over the control
//     channel (BODY <conn_id> <bytes> messages, then BODYEND <conn_id>, or
//     BODYERR <conn_id> if the client's upload failed). The handler reads
//     it from r.Body as usual, while it arrives; r.ContentLength is the
//     client's Content-Length, or -1 for a chunked upload. The front end
//     never has more than the window (ZMQX_WINDOW) sent and unread: the
//     worker grants UCREDIT <conn_id> <bytes> as the handler reads, a
//     quarter window at a time, and at once whatever it owes when the
//     handler has read everything that came and waits for more. So a worker
//     holds at most a window of each upload, and a handler that reads slowly
//     slows the client down. r.Body.Read fails (after the bytes that came)
//     on BODYERR, a body shorter or longer than its Content-Length, or a
//     control connection lost midway, and at once when the client goes
//     away (DISCONNECT) or the request's context ends. A handler that
//     returns without reading the body finishes its request as usual: what
//     was buffered is dropped, and BODY messages still on their way are
//     discarded. (Without a control connection such a body cannot come:
//     r.Body.Read then fails at once. The Caddy module streams uploads only
//     to pools whose workers all speak the control channel.)
//
// # Dispatch deadline
//
// A front end that re-sends requests nobody took (the Caddy module does when
// every worker of a pool has a control channel) adds ZMQX_DEADLINE: <unix
// time in milliseconds>. The worker does not start such a request after
// that instant: it checks when the request gets its handler slot, just
// before the ACK, and a request whose deadline has passed (it waited in the
// queue behind busy handlers, or arrived late) is dropped silently: no ACK,
// no reply, a debug log line, and a count in the log line at shutdown. The
// front end re-sends it, to this worker or another, so it runs once. For
// the same reason a request with a deadline is not started when it cannot
// be acknowledged because the control connection is down: the front end
// would re-send it while it runs. The deadline compares the front end's
// clock with the worker's: across hosts, keep them synchronised (NTP) to
// well within the front end's grace (250 ms for the Caddy module).
//
// # Liveness lease, pauses
//
// A front end declares a worker lost after 1 s without a control message and
// fails (or retries) what it had acknowledged. A worker that was stopped
// longer than that (SIGSTOP, a VM pause, starvation) must not then finish
// those requests: when the control goroutine finds it sent nothing for
// 800 ms it cancels every acknowledged request of that front end, skips the
// ACKs still queued, and sends RESET. An ACK that would leave more than
// 125 ms past its request's deadline is not sent either; the request is
// cancelled, and the front end re-sends it. A request's r.Context().Err()
// applies both rules itself, so check it right before a side effect.
//
// PAUSE from the front end (it finds this worker hung: requests
// acknowledged, nothing answered) makes the worker start nothing more from
// it: it keeps reading its request socket and hands each request back with
// NACK <conn_id> ..., until RESUME (or a new control connection).
//
// # Groups: one message to many clients
//
// Server-sent events, long polls and live feeds send the same bytes to many
// clients. A handler hands its response to a Group with Group.Join and
// returns; the response stays open, holds no handler slot, and receives
// every Group.Broadcast. The worker sends one reply frame per front end and
// 128 clients (Mongrel2's multi-connection reply), not one per client:
//
//	var feed workerkit.Group
//
//	mux.HandleFunc("GET /events", func(w http.ResponseWriter, r *http.Request) {
//		w.Header().Set("Content-Type", "text/event-stream")
//		io.WriteString(w, ": joined\n\n")
//		feed.Join(w, r)
//	})
//	mux.HandleFunc("POST /send", func(w http.ResponseWriter, r *http.Request) {
//		msg, _ := io.ReadAll(r.Body)
//		feed.Broadcast([]byte("data: " + string(msg) + "\n\n"))
//	})
//
// Members leave when their clients go away; Group.Close and worker shutdown
// end their responses properly, so that EventSource clients reconnect
// (possibly to another worker). See examples/chat.
//
// # Bind mode
//
// The usual topology has the front end bind and the workers connect. The
// other one, reverse_proxy style, has each worker bind its own endpoints and
// the front ends connect to a list of workers (the Caddy module's `to
// <requests> <replies>` lines in a pool):
//
//	workerkit.FrontEnd{Requests: "tcp://*:7001", Replies: "tcp://*:7002", Bind: true}
//	-bind tcp://*:7001,tcp://*:7002        (same as -frontend bind:tcp://*:7001,tcp://*:7002)
//
// The worker binds a PULL socket on Requests, which the front ends' PUSH
// sockets connect to, and an XPUB socket on Replies, which their SUB sockets
// connect to. Serve fails at once if it cannot bind. Several front ends may
// connect to one worker: each reply is published to every front end
// subscribed to its sender id, and each front end's SUB keeps only its own
// (front ends sharing a worker should have distinct sender ids; otherwise
// each also receives, and drops, the others' replies). A bound worker serves
// nobody until a front end has subscribed to its replies: requests that
// come earlier wait in the request socket's queue, as a reply published
// before the subscription arrived would be lost. For the same reason, when
// another front end connects to the request socket, the worker takes no
// work (from anyone) until there are as many subscriptions as connections
// to the request socket, so that the newcomer's first requests are not
// answered before it can hear the answers; a peer that connects and never
// subscribes holds the worker up for one second at most (once per
// connection), and is then ignored. At shutdown the worker serves what its
// queue holds and unbinds its request socket, closing the front ends'
// connections to it, so that they send their requests elsewhere.
//
// There is no control channel in bind mode (FrontEnd.Control must be empty):
// no ACK, no flow control of replies, no streamed uploads, no REQ or
// DISCONNECT; the Mongrel2 disconnect notice still cancels a request.
// Front ends that need these bind and let the workers connect.
//
// WebSockets: the front end's WEBSOCKET_HANDSHAKE reaches the handler as
// the GET it was; AcceptWebSocket completes it and returns a WSConn
// (ReadMessage, or NextReader for large messages without a copy;
// WriteMessage, Ping, Close with a code), and WSGroup sends one message to
// many sockets. See docs/websockets.md.
//
// Not supported: Mongrel2's upload streaming (its
// temporary files; the Caddy module's streamed uploads are supported, see
// above) and HTTP trailers.
package workerkit
