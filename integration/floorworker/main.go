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
// are ignored. SIGTERM ends it (Go's default action).
package main

import (
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
)

const helloBody = "Hello, world!\n"

func main() {
	frontEnd := flag.String("frontend", "tcp://127.0.0.1:9997,tcp://127.0.0.1:9996", "`REQUESTS,REPLIES` endpoints to connect to (PULL, PUB)")
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
	if err := serve(zctx, req, rep); err != nil {
		log.Fatal("floorworker: ", err)
	}
}

// serve connects the two sockets and answers requests until an error, or
// until zctx is terminated (nil).
func serve(zctx *zmq.Context, reqEndpoint, repEndpoint string) error {
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
	var (
		out  []byte
		resp response
	)
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
		out = mongrel2.AppendReplyOne(out[:0], r.Sender, r.ConnID, resp.bytes(time.Now()))
		if _, err := pub.SendBytes(out, 0); err != nil {
			if zmq.AsErrno(err) == zmq.ETERM {
				return nil
			}
			if zmq.AsErrno(err) != zmq.Errno(syscall.EINTR) {
				return fmt.Errorf("send: %w", err)
			}
		}
	}
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
