// Command chat is a workerkit worker that shows Group: a chat room whose
// messages reach every listener with server-sent events, one reply frame per
// 128 listeners, however many listeners there are.
//
//	GET  /        the page: an EventSource on /events and a form posting to /send
//	GET  /events  text/event-stream; every message posted, as "data:" lines
//	POST /send    the message (the body, or the form field "message"); 204
//
// Try it behind a front end listening on http://localhost:8080:
//
//	chat -frontend tcp://127.0.0.1:9997,tcp://127.0.0.1:9996
//	curl -N localhost:8080/events &
//	curl -d 'hello, room' localhost:8080/send
//
// Or let the front ends connect to the worker (bind mode; in the Caddyfile,
// `to tcp://host:7001 tcp://host:7002` in a pool): every front end that
// connects shares the one room.
//
//	chat -bind tcp://*:7001,tcp://*:7002
//
// Listeners hold no handler slot: thousands of them cost a worker nothing
// but memory for their connection ids. Several chat workers behind one
// front end would each have their own room; a real application shares
// messages between workers (a database, a message bus) and broadcasts them
// from every worker.
package main

import (
	"bytes"
	"context"
	"flag"
	"io"
	"log"
	"mime"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/zmqbridge/caddy-zmq/workerkit"
)

// maxMessage bounds a posted message.
const maxMessage = 16 << 10

// room holds the listeners of /events.
var room workerkit.Group

const page = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>workerkit chat</title>
<style>
body { font: 16px/1.4 system-ui, sans-serif; max-width: 40em; margin: 2em auto; padding: 0 1em; }
#log { border: 1px solid #ccc; height: 20em; overflow-y: auto; padding: .5em; white-space: pre-wrap; }
#state { color: #777; font-size: 90%; }
form { display: flex; gap: .5em; margin-top: .5em; }
input[name=message] { flex: 1; }
</style>
</head>
<body>
<h1>workerkit chat</h1>
<div id="log"></div>
<p id="state">connecting…</p>
<form id="form" method="post" action="send">
<input name="message" autocomplete="off" placeholder="Say something" autofocus>
<button>Send</button>
</form>
<script>
const log = document.getElementById("log");
const state = document.getElementById("state");
const es = new EventSource("events");
es.onopen = () => { state.textContent = "connected"; };
es.onerror = () => { state.textContent = "disconnected, retrying…"; };
es.onmessage = (e) => {
  const line = document.createElement("div");
  line.textContent = e.data;
  log.appendChild(line);
  log.scrollTop = log.scrollHeight;
};
document.getElementById("form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = e.target.elements.message;
  if (!input.value) return;
  const body = new URLSearchParams({message: input.value});
  input.value = "";
  const r = await fetch("send", {method: "POST", body});
  if (!r.ok) state.textContent = "send failed: " + r.status;
});
</script>
</body>
</html>
`

func index(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = io.WriteString(w, page)
}

// events joins the room. The handler returns at once; the response stays
// open and receives every broadcast until the client leaves.
func events(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // for proxies in front of the front end
	// A comment, so that the client sees the stream open before the first
	// message; Join sends it with the head.
	_, _ = io.WriteString(w, ": joined\n\n")
	if err := room.Join(w, r); err != nil {
		// The response stays ours and ends when we return: EventSource
		// reconnects (to another worker, if this one is stopping).
		log.Printf("events: %v", err)
	}
}

// send broadcasts a message to every listener. The message is the form
// field "message" if the body is a form that has one (the page's form), the
// whole body otherwise (curl -d 'hi', or any client posting text).
func send(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxMessage))
	if err != nil {
		http.Error(w, "message too large", http.StatusRequestEntityTooLarge)
		return
	}
	msg := string(body)
	switch ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct {
	case "application/x-www-form-urlencoded":
		if v, err := url.ParseQuery(msg); err == nil && v.Has("message") {
			msg = v.Get("message")
		}
	case "multipart/form-data":
		r.Body = io.NopCloser(bytes.NewReader(body))
		if err := r.ParseMultipartForm(maxMessage); err == nil && r.PostForm.Has("message") {
			msg = r.PostForm.Get("message")
		}
	}
	msg = strings.TrimRight(msg, "\r\n")
	if msg == "" {
		http.Error(w, "empty message: send it as the body or as the form field \"message\"", http.StatusBadRequest)
		return
	}
	if err := room.Broadcast(event(msg)); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// event formats msg as one server-sent event: a "data:" line per line.
func event(msg string) []byte {
	msg = strings.ReplaceAll(msg, "\r\n", "\n")
	msg = strings.ReplaceAll(msg, "\r", "\n")
	var b strings.Builder
	for line := range strings.SplitSeq(msg, "\n") {
		b.WriteString("data: ")
		b.WriteString(line)
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	return []byte(b.String())
}

// ping keeps idle streams from being cut by proxies and load balancers that
// close quiet connections.
func ping(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = room.Broadcast([]byte(": ping\n\n"))
		}
	}
}

func main() {
	var frontEnds workerkit.FrontEndList
	flag.Var(&frontEnds, "frontend", workerkit.FrontEndUsage)
	flag.Var(frontEnds.Bind(), "bind", workerkit.BindUsage)
	maxConc := flag.Int("max-concurrent", workerkit.DefaultMaxConcurrent, "handlers running at once (listeners do not count)")
	debugAddr := flag.String("debug", "", "serve the worker's own counters (workerkit.Stats) as JSON on `ADDR`, e.g. 127.0.0.1:6060")
	pingEvery := flag.Duration("ping", 15*time.Second, "send a comment to idle listeners this often (0: never)")
	var curve workerkit.CurveFlags
	curve.Register(flag.CommandLine)
	flag.Parse()
	if len(frontEnds) == 0 {
		frontEnds = workerkit.FrontEndList{workerkit.DefaultFrontEnd}
	}
	if err := curve.Apply(frontEnds); err != nil {
		log.Fatal(err)
	}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", index)
	mux.HandleFunc("GET /events", events)
	mux.HandleFunc("POST /send", send)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *pingEvery > 0 {
		go ping(ctx, *pingEvery)
	}
	w := &workerkit.Worker{FrontEnds: frontEnds, Handler: mux, MaxConcurrent: *maxConc}
	if *debugAddr != "" {
		go func() {
			if err := workerkit.ServeDebug(ctx, *debugAddr, w); err != nil {
				log.Printf("debug address: %v", err)
			}
		}()
	}
	// Serve ends the listeners' streams when it starts draining.
	if err := w.Serve(ctx); err != nil {
		log.Fatal(err)
	}
}
