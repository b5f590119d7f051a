// Command floorworker is the ZeroMQ floor of `make bench`: the least work a
// Go Mongrel2-protocol worker can do per request. One loop on one goroutine
// receives a request (PULL), parses it with internal/mongrel2, formats a fixed
// hello-world HTTP response and publishes it (PUB); no goroutines, no
// hand-offs, no flow control. The bench runs it behind Caddy's `zmq` and
// behind Mongrel2 next to workerkit's hello worker, so what workerkit and the
// module cost beyond moving messages through libzmq can be read off.
//
//	floorworker -frontend tcp://127.0.0.1:9997,tcp://127.0.0.1:9996
//
// Every request gets the same answer, byte for byte what workerkit's hello
// example sends for a GET (status line, Content-Type, Date, Content-Length,
// body), so both workers put the same bytes on the wire; disconnect notices
// are ignored. WebSockets are the floor of the WebSocket echo: a handshake
// (Mongrel2's WEBSOCKET_HANDSHAKE, the accept key in its body) gets the 101,
// each message (WEBSOCKET) comes back as one frame of the same opcode, a
// ping as a pong, a close as a close and the end of the socket (an empty
// reply). SIGTERM ends it (Go's default action).
package main

import (
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/wsframe"
)

const helloBody = "Hello, world!\n"

func main() {
	frontEnd := flag.String("frontend", "tcp://127.0.0.1:9997,tcp://127.0.0.1:9996", "`REQUESTS,REPLIES` endpoints to connect to (PULL, PUB)")
	viaHandler := flag.Bool("handler", false, "answer HTTP requests through a net/http Handler (workerkit's hello) instead of fixed bytes (handler.go)")
	flag.Parse()
	req, rep, ok := strings.Cut(*frontEnd, ",")
	if !ok || req == "" || rep == "" {
		fmt.Fprintln(os.Stderr, "floorworker: -frontend needs REQUESTS,REPLIES")
		os.Exit(2)
	}
	zctx, err := zmq.NewContext()
	if err != nil {
		log.Fatal("floorworker: ", err)
	}
	var a answerer
	if *viaHandler {
		a.handler = &handlerFloor{h: http.HandlerFunc(hello)}
	}
	if err := serve(zctx, req, rep, &a); err != nil {
		log.Fatal("floorworker: ", err)
	}
}

// serve connects the two sockets and answers requests until an error, or
// until zctx is terminated (nil).
func serve(zctx *zmq.Context, reqEndpoint, repEndpoint string, a *answerer) error {
	pull, err := zctx.NewSocket(zmq.PULL)
	if err != nil {
		return fmt.Errorf("PULL socket: %w", err)
	}
	defer pull.Close()
	pub, err := zctx.NewSocket(zmq.PUB)
	if err != nil {
		return fmt.Errorf("PUB socket: %w", err)
	}
	defer pub.Close()
	for _, s := range []*zmq.Socket{pull, pub} {
		if err := s.SetLinger(0); err != nil {
			return fmt.Errorf("linger: %w", err)
		}
	}
	if err := pull.Connect(reqEndpoint); err != nil {
		return fmt.Errorf("connect %s: %w", reqEndpoint, err)
	}
	if err := pub.Connect(repEndpoint); err != nil {
		return fmt.Errorf("connect %s: %w", repEndpoint, err)
	}
	for {
		msg, err := pull.RecvBytes(0)
		switch {
		case err == nil:
		case zmq.AsErrno(err) == zmq.ETERM:
			return nil
		case zmq.AsErrno(err) == zmq.Errno(syscall.EINTR):
			continue
		default:
			return fmt.Errorf("receive: %w", err)
		}
		r, err := mongrel2.ParseRequest(msg)
		if err != nil {
			log.Printf("floorworker: dropping a malformed request: %v", err)
			continue
		}
		if r.IsDisconnect() {
			continue
		}
		reply, end := a.answer(r)
		if reply == nil {
			continue
		}
		err = send(pub, reply)
		if err == nil && end {
			err = send(pub, mongrel2.AppendReplyOne(reply[:0], r.Sender, r.ConnID, nil))
		}
		if errors.Is(err, errTerminated) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

var errTerminated = errors.New("context terminated")

// send publishes one reply; EINTR drops it.
func send(pub *zmq.Socket, reply []byte) error {
	_, err := pub.SendBytes(reply, 0)
	switch {
	case err == nil, zmq.AsErrno(err) == zmq.Errno(syscall.EINTR):
		return nil
	case zmq.AsErrno(err) == zmq.ETERM:
		return errTerminated
	}
	return fmt.Errorf("send: %w", err)
}

// answerer formats replies into buffers it reuses.
type answerer struct {
	out, frame []byte
	resp       response
	handler    *handlerFloor // with -handler
}

// answer returns the reply to r (nil: none), and whether the socket ends
// after it (an empty reply follows).
func (a *answerer) answer(r *mongrel2.Request) (reply []byte, end bool) {
	var payload []byte
	switch r.Header("METHOD") {
	case mongrel2.MethodWebSocketHandshake:
		a.frame = append(append(a.frame[:0], wsframe.SwitchingHead...), r.Body...)
		payload = append(a.frame, "\r\n\r\n"...)
	case mongrel2.MethodWebSocket:
		if payload, end = a.echo(r); payload == nil {
			return nil, false
		}
	default:
		if a.handler != nil {
			payload = a.handler.answer(r)
		} else {
			payload = a.resp.bytes(time.Now())
		}
	}
	a.out = mongrel2.AppendReplyOne(a.out[:0], r.Sender, r.ConnID, payload)
	return a.out, end
}

// echo answers one WebSocket message: its payload back in one frame of its
// opcode (FLAGS is "0x%X" of the first frame byte), a ping with a pong, a
// close with a close that ends the socket; nil for a pong.
func (a *answerer) echo(r *mongrel2.Request) (frame []byte, end bool) {
	flags, ok := mongrel2.ParseFlags(r.Header(mongrel2.HeaderFlags))
	if !ok {
		log.Printf("floorworker: dropping a WebSocket message with FLAGS %q", r.Header(mongrel2.HeaderFlags))
		return nil, false
	}
	op := flags & 0x0F
	switch op {
	case wsframe.OpPong:
		return nil, false
	case wsframe.OpPing:
		op = wsframe.OpPong
	}
	a.frame = wsframe.AppendFrame(a.frame[:0], op, r.Body)
	return a.frame, op == wsframe.OpClose
}

// response is the hello-world HTTP response, re-formatted once a second for
// its Date header (as workerkit caches its Date line).
type response struct {
	sec int64
	b   []byte
}

func (r *response) bytes(now time.Time) []byte {
	if s := now.Unix(); s != r.sec || r.b == nil {
		r.sec = s
		r.b = append(r.b[:0], "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nDate: "...)
		r.b = now.UTC().AppendFormat(r.b, http.TimeFormat)
		r.b = append(r.b, "\r\nContent-Length: "...)
		r.b = strconv.AppendInt(r.b, int64(len(helloBody)), 10)
		r.b = append(r.b, "\r\n\r\n"+helloBody...)
	}
	return r.b
}
