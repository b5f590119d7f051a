// Command testworker is the workerkit worker the integration tests run behind
// Caddy (and behind a real Mongrel2).
//
// Usage:
//
//	testworker [-name NAME] [-frontend tcp://127.0.0.1:9997,tcp://127.0.0.1:9996]...
//
// Endpoints:
//
//	/hang...          blocks until the request's context is done; prints
//	                  "STARTED <path>" on arrival and "CANCELLED <path>" after.
//	/stream?n=N       N chunks "chunk <i>\n", each flushed (&delay=DURATION between them)
//	/big?bytes=N      N bytes of a fixed pattern (see bigPattern)
//	anything else     JSON echo of the request (type echo)
//
// -rogue-frame N makes it also a rogue: it sends one reply frame of N bytes
// on a PUB socket of its own (rogue.go).
//
// On every path ?read=N reads N bytes of the body (or up to its end) and
// answers "read <bytes>" at once, without waiting for the rest; ?status=N
// sets the status, ?sleep=DURATION delays the
// answer, ?header=NAME:VALUE (repeatable) adds a response header and
// ?on=NAME limits sleep and /hang to the worker of that name, and ?mark=1
// prints "RAN <path>" as the handler starts (tests count executions). Every response carries "X-Worker: <name>", two Set-Cookie headers,
// and "X-Echo-Token: <token>" when the request had an X-Token header.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/zmqbridge/caddy-zmq/workerkit"
)

// echo is the JSON body of an echo response. integration tests decode the
// same shape from testdata/m2handler.py.
type echo struct {
	Worker     string              `json:"worker"`
	Method     string              `json:"method"`
	Path       string              `json:"path"`
	Query      string              `json:"query"`
	RequestURI string              `json:"request_uri"`
	Headers    map[string][]string `json:"headers"` // lower-case names
	Body       string              `json:"body"`    // empty when over maxEchoBody
	BodyLen    int                 `json:"body_len"`
	BodySHA256 string              `json:"body_sha256"`
	RemoteAddr string              `json:"remote_addr"`
	TLS        bool                `json:"tls"`
	Proto      string              `json:"proto"`
	Host       string              `json:"host"`
}

const maxEchoBody = 64 << 10

// bigPattern is repeated to make /big bodies; tests check the content.
const bigPattern = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/\n"

type frontEnds []workerkit.FrontEnd

func (f *frontEnds) String() string { return fmt.Sprint(*f) }
func (f *frontEnds) Set(s string) error {
	fe, err := workerkit.ParseFrontEnd(s)
	if err != nil {
		return err
	}
	*f = append(*f, fe)
	return nil
}

// out serialises the lines tests wait for.
var out struct {
	sync.Mutex
	w io.Writer
}

func say(format string, args ...any) {
	out.Lock()
	defer out.Unlock()
	fmt.Fprintf(out.w, format+"\n", args...)
}

func main() {
	var fes frontEnds
	flag.Var(&fes, "frontend", "front end `requests,replies` endpoints (repeatable; default tcp://127.0.0.1:9997,tcp://127.0.0.1:9996)")
	name := flag.String("name", "testworker", "value of the X-Worker response header")
	maxConc := flag.Int("max-concurrent", 0, "Worker.MaxConcurrent (0: workerkit's default)")
	var curve workerkit.CurveFlags
	curve.Register(flag.CommandLine)
	id := flag.String("id", "", "Worker.ID on control channels (default: random)")
	debugAddr := flag.String("debug", "", "serve the worker's Stats as JSON on `ADDR`")
	rogueFrame := flag.Int("rogue-frame", 0, "also send one reply frame of `N` bytes on a PUB of its own, with the worker's keys (a rogue worker)")
	flag.Parse()
	if len(fes) == 0 {
		_ = fes.Set("tcp://127.0.0.1:9997,tcp://127.0.0.1:9996")
	}
	if err := curve.Apply(fes); err != nil {
		fmt.Fprintln(os.Stderr, "testworker:", err)
		os.Exit(2)
	}
	out.w = os.Stdout

	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	w := &workerkit.Worker{
		FrontEnds:       fes,
		Handler:         handler(*name),
		MaxConcurrent:   *maxConc,
		ShutdownTimeout: 5 * time.Second,
		Logger:          logger,
		ID:              *id,
	}
	if *debugAddr != "" {
		go func() {
			if err := workerkit.ServeDebug(ctx, *debugAddr, w); err != nil {
				logger.Error("debug address", "err", err)
			}
		}()
	}
	say("SERVING %s", *name)
	if *rogueFrame > 0 {
		go func() {
			if err := sendRogueFrame(fes[0], *rogueFrame); err != nil {
				logger.Error("rogue frame", "err", err)
			}
		}()
	}
	if err := w.Serve(ctx); err != nil {
		logger.Error("serve", "err", err)
		os.Exit(1)
	}
	say("STOPPED %s", *name)
}

func handler(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("mark") != "" {
			say("RAN %s", r.URL.Path)
		}
		h := w.Header()
		h.Set("X-Worker", name)
		h.Add("Set-Cookie", "a=1; Path=/")
		h.Add("Set-Cookie", "b=2; Path=/")
		if tok := r.Header.Get("X-Token"); tok != "" {
			h.Set("X-Echo-Token", tok)
		}
		for _, kv := range q["header"] {
			if k, v, ok := strings.Cut(kv, ":"); ok {
				h.Add(k, strings.TrimSpace(v))
			}
		}
		// on=<name>: sleep and hang apply only on the worker of that name;
		// the others answer at once (tests that need one given worker busy).
		here := q.Get("on") == "" || q.Get("on") == name
		if d, err := time.ParseDuration(q.Get("sleep")); err == nil && d > 0 && here {
			select {
			case <-time.After(d):
			case <-r.Context().Done():
				say("CANCELLED %s", r.URL.Path)
				return
			}
		}
		status := http.StatusOK
		if s := q.Get("status"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 100 || n > 999 {
				http.Error(w, "bad status", http.StatusBadRequest)
				return
			}
			status = n
		}

		if s := q.Get("read"); s != "" {
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil || n < 0 {
				http.Error(w, "bad read", http.StatusBadRequest)
				return
			}
			got, _ := io.CopyN(io.Discard, r.Body, n)
			h.Set("Content-Type", "text/plain")
			w.WriteHeader(status)
			fmt.Fprintf(w, "read %d\n", got)
			return
		}

		switch {
		case strings.HasPrefix(r.URL.Path, "/hang") && here:
			say("STARTED %s", r.URL.Path)
			<-r.Context().Done()
			say("CANCELLED %s", r.URL.Path)
			return

		case r.URL.Path == "/stream":
			n, _ := strconv.Atoi(q.Get("n"))
			delay, _ := time.ParseDuration(q.Get("delay"))
			h.Set("Content-Type", "text/plain")
			w.WriteHeader(status)
			f, _ := w.(http.Flusher)
			for i := 0; i < n; i++ {
				if i > 0 && delay > 0 {
					select {
					case <-time.After(delay):
					case <-r.Context().Done():
						say("CANCELLED %s", r.URL.Path)
						return
					}
				}
				fmt.Fprintf(w, "chunk %d\n", i)
				if f != nil {
					f.Flush()
				}
			}
			return

		case r.URL.Path == "/big":
			n, _ := strconv.Atoi(q.Get("bytes"))
			h.Set("Content-Type", "application/octet-stream")
			h.Set("Content-Length", strconv.Itoa(n))
			w.WriteHeader(status)
			if r.Method == http.MethodHead {
				return
			}
			buf := []byte(strings.Repeat(bigPattern, (32<<10)/len(bigPattern)))
			for n > 0 {
				k := min(n, len(buf))
				if _, err := w.Write(buf[:k]); err != nil {
					return
				}
				n -= k
			}
			return
		}

		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
			return
		}
		sum := sha256.Sum256(body)
		e := echo{
			Worker:     name,
			Method:     r.Method,
			Path:       r.URL.Path,
			Query:      r.URL.RawQuery,
			RequestURI: r.RequestURI,
			Headers:    map[string][]string{},
			BodyLen:    len(body),
			BodySHA256: hex.EncodeToString(sum[:]),
			RemoteAddr: r.RemoteAddr,
			TLS:        r.TLS != nil,
			Proto:      r.Proto,
			Host:       r.Host,
		}
		if len(body) <= maxEchoBody {
			e.Body = string(body)
		}
		for k, v := range r.Header {
			lk := strings.ToLower(k)
			e.Headers[lk] = append(e.Headers[lk], v...)
		}
		b, _ := json.Marshal(e)
		if status == http.StatusNoContent || status == http.StatusNotModified {
			w.WriteHeader(status)
			return
		}
		h.Set("Content-Type", "application/json")
		h.Set("Content-Length", strconv.Itoa(len(b)))
		w.WriteHeader(status)
		if r.Method == http.MethodHead {
			return
		}
		_, _ = w.Write(b)
	})
}
