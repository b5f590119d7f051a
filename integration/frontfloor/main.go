// Command frontfloor is the front-end floor of `make bench`: the least work a
// Go HTTP server can do to bridge requests to Mongrel2-protocol workers
// through libzmq, as the floor worker (integration/floorworker) is for the
// worker side. The bench runs it in front of the floor worker, and in its
// -respond mode answering by itself, so that what bridging costs any Go
// front end built on net/http and libzmq (its thread hand-offs, cgo calls
// and libzmq's I/O thread) can be read off beside what Caddy's `zmq`
// handler costs beyond Caddy's `respond`.
//
//	frontfloor -listen 127.0.0.1:8080 -frontend tcp://127.0.0.1:9997,tcp://127.0.0.1:9996
//	frontfloor -listen 127.0.0.1:8080 -respond
//	frontfloor -listen 127.0.0.1:8080 -respond -spin 16us
//
// Per request, on the request's own goroutine (net/http's): encode the
// Mongrel2 request (METHOD, VERSION, URI, PATH, QUERY and the client's
// headers as JSON), send it on the PUSH socket under a mutex (no hand-off
// to an owner goroutine), and wait for the reply; one goroutine receives on
// the SUB socket and hands each reply to its request's goroutine. The
// reply's HTTP head is parsed just enough to copy its status and headers.
// No flow control, no timeouts beyond one fixed limit, no retries, no
// disconnect notices: a floor, not a product. Sending through an owner
// goroutine instead, as the module does, measured the same; SIGTERM ends
// it.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/zmqio"
)

const (
	sender      = "frontfloor-0000-0000-0000-000000000000"
	helloBody   = "Hello, world!\n"
	replyLimit  = 10 * time.Second
	maxBodySize = 1 << 20
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "HTTP `ADDR` to serve on")
	frontEnd := flag.String("frontend", "tcp://127.0.0.1:9997,tcp://127.0.0.1:9996", "`REQUESTS,REPLIES` endpoints to bind (PUSH, SUB)")
	respond := flag.Bool("respond", false, "answer every request with "+strconv.Quote(helloBody)+" without any worker (the baseline)")
	spin := flag.Duration("spin", 0, "keep the CPU busy this long in every request, in both modes, so that the floor's HTTP side costs about what a heavier server's (Caddy's) does")
	flag.Parse()
	var h http.Handler = http.HandlerFunc(respondHello)
	if !*respond {
		req, rep, ok := strings.Cut(*frontEnd, ",")
		if !ok || req == "" || rep == "" {
			fmt.Fprintln(os.Stderr, "frontfloor: -frontend needs REQUESTS,REPLIES")
			os.Exit(2)
		}
		b, err := newBridge(req, rep)
		if err != nil {
			log.Fatal("frontfloor: ", err)
		}
		h = b
	}
	if *spin > 0 {
		h = spinning(*spin, h)
	}
	log.Fatal(http.ListenAndServe(*listen, h))
}

// spinning runs h after keeping the CPU busy for d. A front end's CPU per
// request for bridging grows with what its HTTP side costs (the slower it
// serves, the fewer messages libzmq's threads find per wake-up), so the
// floor is compared with Caddy's module at Caddy's weight this way.
func spinning(d time.Duration, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for start := time.Now(); time.Since(start) < d; {
		}
		h.ServeHTTP(w, r)
	})
}

func respondHello(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte(helloBody))
}

// bridge is the whole front end: a PUSH socket any request goroutine sends
// on (under mu), and the waiting requests by connection id.
type bridge struct {
	mu   sync.Mutex
	push *zmq.Socket
	next uint64
	wait map[string]chan []byte
}

func newBridge(reqEndpoint, repEndpoint string) (*bridge, error) {
	push, err := zmq.NewSocket(zmq.PUSH)
	if err != nil {
		return nil, fmt.Errorf("PUSH socket: %w", err)
	}
	if err := push.Bind(reqEndpoint); err != nil {
		return nil, fmt.Errorf("bind %s: %w", reqEndpoint, err)
	}
	sub, err := zmq.NewSocket(zmq.SUB)
	if err != nil {
		return nil, fmt.Errorf("SUB socket: %w", err)
	}
	if err := sub.SetSubscribe(sender); err != nil {
		return nil, fmt.Errorf("subscribe: %w", err)
	}
	if err := sub.Bind(repEndpoint); err != nil {
		return nil, fmt.Errorf("bind %s: %w", repEndpoint, err)
	}
	rcv, err := zmqio.NewReceiver(sub)
	if err != nil {
		return nil, err
	}
	rd, err := zmqio.NewReadiness(sub)
	if err != nil {
		return nil, err
	}
	b := &bridge{push: push, wait: make(map[string]chan []byte)}
	go b.receive(rcv, rd)
	return b, nil
}

// receive hands each reply to the goroutine of the request it names. It
// waits in Go's network poller between replies (ZMQ_FD, as the module
// does): a goroutine blocked in libzmq's receive instead cost more CPU per
// request.
func (b *bridge) receive(rcv *zmqio.Receiver, rd *zmqio.Readiness) {
	var (
		msg []byte
		err error
	)
	try := func() bool {
		msg, err = rcv.RecvCopy(zmq.DONTWAIT)
		return zmq.AsErrno(err) != zmq.Errno(syscall.EAGAIN)
	}
	for {
		if werr := rd.Await(try); werr != nil {
			log.Fatal("frontfloor: wait: ", werr)
		}
		if err != nil {
			log.Fatal("frontfloor: receive: ", err)
		}
		b.deliver(msg)
	}
}

// deliver hands a reply to the requests it names.
func (b *bridge) deliver(msg []byte) {
	_, ids, body, err := mongrel2.ParseReply(msg)
	if err != nil {
		log.Print("frontfloor: dropping a malformed reply: ", err)
		return
	}
	for len(ids) > 0 {
		var id []byte
		id, ids = mongrel2.NextID(ids)
		b.mu.Lock()
		ch := b.wait[string(id)]
		b.mu.Unlock()
		select {
		case ch <- body:
		default: // no such request, or a second reply for it: dropped
		}
	}
}

func (b *bridge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var enc mongrel2.HeaderEncoder
	enc.Reset(mongrel2.FormatJSON)
	enc.Add("METHOD", r.Method)
	enc.Add("VERSION", r.Proto)
	enc.Add("URI", r.RequestURI)
	enc.Add("PATH", r.URL.Path)
	if r.URL.RawQuery != "" {
		enc.Add("QUERY", r.URL.RawQuery)
	}
	enc.Add("host", r.Host)
	for name, values := range r.Header {
		enc.AddList(strings.ToLower(name), values)
	}
	var body []byte
	if r.ContentLength != 0 {
		var buf bytes.Buffer
		if _, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, maxBodySize)); err != nil {
			http.Error(w, "request body: "+err.Error(), http.StatusRequestEntityTooLarge)
			return
		}
		body = buf.Bytes()
	}

	ch := make(chan []byte, 1)
	b.mu.Lock()
	b.next++
	id := strconv.FormatUint(b.next, 10)
	b.wait[id] = ch
	frame := mongrel2.AppendRequest(nil, sender, id, r.URL.Path, enc.Bytes(), body)
	_, err := b.push.SendBytes(frame, 0)
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.wait, id)
		b.mu.Unlock()
	}()
	if err != nil {
		http.Error(w, "send: "+err.Error(), http.StatusBadGateway)
		return
	}
	t := time.NewTimer(replyLimit)
	defer t.Stop()
	select {
	case reply := <-ch:
		writeReply(w, reply)
	case <-t.C:
		http.Error(w, "no reply", http.StatusGatewayTimeout)
	case <-r.Context().Done():
	}
}

var errReplyHead = errors.New("malformed HTTP head in reply")

// writeReply copies a worker's raw HTTP response to w.
func writeReply(w http.ResponseWriter, reply []byte) {
	status, body, err := copyHead(w.Header(), reply)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// copyHead parses the status line and header lines of reply into h, and
// returns the status and the body after them.
func copyHead(h http.Header, reply []byte) (status int, body []byte, err error) {
	head, body, ok := bytes.Cut(reply, []byte("\r\n\r\n"))
	if !ok {
		return 0, nil, errReplyHead
	}
	lines := bytes.Split(head, []byte("\r\n"))
	f := bytes.Fields(lines[0])
	if len(f) < 2 {
		return 0, nil, errReplyHead
	}
	// net/http panics on a status outside 100..999.
	status, err = strconv.Atoi(string(f[1]))
	if err != nil || status < 100 || status > 999 {
		return 0, nil, errReplyHead
	}
	for _, line := range lines[1:] {
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return 0, nil, errReplyHead
		}
		h.Add(string(name), string(bytes.TrimSpace(value)))
	}
	return status, body, nil
}
