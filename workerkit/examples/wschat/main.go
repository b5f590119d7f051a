// Command wschat is a workerkit worker that shows WebSockets: a chat room
// over WebSockets, with a page a browser opens, and an echo endpoint.
//
//	GET /      the page: a WebSocket on /ws, a form sending text messages,
//	           a button sending a binary message
//	GET /ws    WebSocket: every text message goes to everyone in the room
//	           (WSGroup: one reply per 128 sockets); a binary message comes
//	           back to its sender only, with its length in a text message
//	GET /echo  WebSocket: every message back to its sender (tests, benchmarks)
//
// Try it behind Caddy (caddyfiles/websockets.Caddyfile) on http://localhost:8080:
//
//	wschat -frontend tcp://127.0.0.1:9997,tcp://127.0.0.1:9996,tcp://127.0.0.1:9995
//
// Sockets hold no handler slot while they are open. Several wschat workers
// behind one front end each have their own room; a real application shares
// messages between workers (a database, a message bus).
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/zmqbridge/caddy-zmq/workerkit"
)

// room holds the sockets of /ws.
var room workerkit.WSGroup

const page = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>workerkit websocket chat</title>
<style>
body { font: 16px/1.4 system-ui, sans-serif; max-width: 40em; margin: 2em auto; padding: 0 1em; }
#log { border: 1px solid #ccc; height: 20em; overflow-y: auto; padding: .5em; white-space: pre-wrap; }
</style>
</head>
<body>
<h1>workerkit websocket chat</h1>
<p>State: <span id="state">connecting</span></p>
<div id="log"></div>
<form id="form"><input id="msg" autocomplete="off" autofocus> <button>Send</button>
<button type="button" id="bin">Send 4 binary bytes</button></form>
<script>
const log = document.getElementById("log"), state = document.getElementById("state");
const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
ws.binaryType = "arraybuffer";
const received = [];
ws.onopen = () => { state.textContent = "connected"; };
ws.onclose = (e) => { state.textContent = "closed " + e.code; };
ws.onmessage = (e) => {
  const text = typeof e.data === "string" ? e.data : "binary " + new Uint8Array(e.data).join(",");
  received.push(text);
  const line = document.createElement("div");
  line.textContent = text;
  log.appendChild(line);
  log.scrollTop = log.scrollHeight;
};
document.getElementById("form").onsubmit = (e) => {
  e.preventDefault();
  const m = document.getElementById("msg");
  if (m.value) ws.send(m.value);
  m.value = "";
};
document.getElementById("bin").onclick = () => ws.send(new Uint8Array([1, 2, 3, 255]));
</script>
</body>
</html>
`

func index(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	io.WriteString(w, page)
}

// sameOrigin refuses cross-site WebSockets: browsers send cookies with
// them, so a page elsewhere could otherwise act as the user
// (cross-site WebSocket hijacking). Clients that are not browsers send no
// Origin.
func sameOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	u, err := url.Parse(o)
	return err == nil && u.Host == r.Host
}

// accept completes the handshake, or answers why not.
func accept(w http.ResponseWriter, r *http.Request) *workerkit.WSConn {
	if !workerkit.IsWebSocketUpgrade(r) {
		http.Error(w, "this is a WebSocket endpoint", http.StatusUpgradeRequired)
		return nil
	}
	if !sameOrigin(r) {
		http.Error(w, "cross-origin WebSocket refused", http.StatusForbidden)
		return nil
	}
	c, err := workerkit.AcceptWebSocket(w, r, nil)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return nil
	}
	return c
}

// keepAlive pings c every d while it is open, so that idle sockets are
// not cut by proxies that close quiet connections.
func keepAlive(ctx context.Context, c *workerkit.WSConn, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if c.Ping(nil) != nil {
				return
			}
		}
	}
}

func chat(pingEvery time.Duration) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c := accept(w, r)
		if c == nil {
			return
		}
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		go keepAlive(ctx, c, pingEvery)
		room.Add(c)
		for {
			typ, msg, err := c.ReadMessage()
			if err != nil {
				return // returning closes c and takes it out of the room
			}
			if typ == workerkit.BinaryMessage {
				_ = c.WriteMessage(workerkit.BinaryMessage, msg)
				_ = c.WriteMessage(workerkit.TextMessage, []byte(fmt.Sprintf("binary message of %d bytes", len(msg))))
				continue
			}
			_ = room.Broadcast(workerkit.TextMessage, msg)
		}
	}
}

// echo sends every message back. It reads each into a buffer it reuses
// (NextReader), as the net/http echo it is measured against does: nothing
// is allocated per message, however large.
func echo(w http.ResponseWriter, r *http.Request) {
	c := accept(w, r)
	if c == nil {
		return
	}
	var buf bytes.Buffer
	for {
		typ, msg, err := c.NextReader()
		if err != nil {
			return
		}
		buf.Reset()
		if _, err := io.Copy(&buf, msg); err != nil {
			return
		}
		if c.WriteMessage(typ, buf.Bytes()) != nil {
			return
		}
	}
}

func main() {
	var frontEnds workerkit.FrontEndList
	flag.Var(&frontEnds, "frontend", workerkit.FrontEndUsage)
	flag.Var(frontEnds.Bind(), "bind", workerkit.BindUsage)
	maxConc := flag.Int("max-concurrent", workerkit.DefaultMaxConcurrent, "handlers running at once (open sockets do not count)")
	pingEvery := flag.Duration("ping", 30*time.Second, "ping idle chat sockets this often (0: never)")
	flag.Parse()
	if len(frontEnds) == 0 {
		frontEnds = workerkit.FrontEndList{workerkit.DefaultFrontEnd}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", index)
	mux.Handle("GET /ws", chat(*pingEvery))
	mux.HandleFunc("GET /echo", echo)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	w := &workerkit.Worker{FrontEnds: frontEnds, Handler: mux, MaxConcurrent: *maxConc}
	// Serve closes open sockets with 1001 when it starts draining.
	if err := w.Serve(ctx); err != nil {
		log.Fatal(err)
	}
}
