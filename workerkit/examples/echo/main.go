// Command echo is a workerkit worker for trying out and debugging a front
// end: it shows exactly what a handler receives, and streams on request.
//
//	GET  /anything?x=1      JSON description of the request (method, URL, headers, body...)
//	POST /anything          same, with the body echoed
//	GET  /stream?n=5&ms=200 n lines, one every ms milliseconds, flushed as they are written
//	GET  /status/418        an empty response with that status
//	GET  /big?bytes=N       N bytes of a repeating pattern, written 64 KiB at a time
//	                        (with a control channel, paced by the client's speed)
//	POST /upload            reads the whole body; answers {"bytes": n, "sha256": "<hex>"}
//	                        (with a control channel a large body is streamed to the
//	                        worker under credit: any size, a window of memory); a
//	                        body that ends in an error (the client's upload broke,
//	                        or it went over the front end's limit) prints
//	                        "UPLOAD-ERROR <request URI> <bytes read> <error>" to stdout
//	GET  /wait              prints "WAITING /wait <request URI>" to stdout, blocks
//	                        until the request's context is done (the client went
//	                        away, or shutdown), then prints
//	                        "CANCELLED /wait <request URI>" to stdout
//
// -frontend takes the endpoints REQUESTS,REPLIES[,CONTROL] and may be repeated.
// -bind REQUESTS,REPLIES (repeatable too) binds those endpoints instead, and
// front ends connect to the worker (the Caddy module's `to` lines), e.g.
//
//	echo -bind tcp://*:7001,tcp://*:7002
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/zmqbridge/caddy-zmq/workerkit"
)

const maxEchoBody = 10 << 20

type echoed struct {
	Method        string              `json:"method"`
	URL           string              `json:"url"`
	Path          string              `json:"path"`
	Query         map[string][]string `json:"query"`
	Proto         string              `json:"proto"`
	Host          string              `json:"host"`
	RemoteAddr    string              `json:"remote_addr"`
	TLS           bool                `json:"tls"`
	Header        http.Header         `json:"header"`
	ContentLength int64               `json:"content_length"`
	Body          string              `json:"body"`
}

func anything(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxEchoBody))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(echoed{
		Method: r.Method, URL: r.URL.String(), Path: r.URL.Path, Query: r.URL.Query(),
		Proto: r.Proto, Host: r.Host, RemoteAddr: r.RemoteAddr, TLS: r.TLS != nil,
		Header: r.Header, ContentLength: r.ContentLength, Body: string(body),
	})
}

// stream shows Flush and cancellation: the lines reach the client one by
// one, and a client that goes away stops the loop through r.Context().
func stream(w http.ResponseWriter, r *http.Request) {
	n := queryInt(r, "n", 5, 1, 1000)
	interval := time.Duration(queryInt(r, "ms", 200, 0, 60_000)) * time.Millisecond
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	t := time.NewTicker(max(interval, time.Millisecond))
	defer t.Stop()
	for i := 1; i <= n; i++ {
		if _, err := fmt.Fprintf(w, "line %d of %d at %s\n", i, n, time.Now().Format(time.RFC3339Nano)); err != nil {
			return
		}
		if err := http.NewResponseController(w).Flush(); err != nil {
			return
		}
		if i == n {
			break
		}
		select {
		case <-t.C:
		case <-r.Context().Done():
			log.Printf("stream: client went away after %d lines", i)
			return
		}
	}
}

func status(w http.ResponseWriter, r *http.Request) {
	code, err := strconv.Atoi(r.PathValue("code"))
	if err != nil || code < 200 || code > 999 {
		http.Error(w, "status must be 200-999", http.StatusBadRequest)
		return
	}
	w.WriteHeader(code)
}

// bigPattern is repeated to make /big bodies (the same pattern as the
// integration tests' worker, so that clients can check the content).
const bigPattern = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/\n"

// bigChunk is one 64 KiB write of the pattern; 65536 is a multiple of
// len(bigPattern), so consecutive writes continue the pattern.
var bigChunk = []byte(strings.Repeat(bigPattern, (64<<10)/len(bigPattern)))

// big streams N bytes. With a control channel the writes block while the
// client is slow, so the worker never holds more than the window.
func big(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.ParseInt(r.URL.Query().Get("bytes"), 10, 64)
	if err != nil || n < 0 {
		http.Error(w, "want ?bytes=N (N >= 0)", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	if r.Method == http.MethodHead {
		return
	}
	for n > 0 {
		k := min(n, int64(len(bigChunk)))
		if _, err := w.Write(bigChunk[:k]); err != nil {
			log.Printf("big: stopped with %d bytes left: %v", n, err)
			return
		}
		n -= k
	}
}

// upload reads the body, however large the front end lets it be, and
// answers its length and SHA-256.
func upload(w http.ResponseWriter, r *http.Request) {
	sum := sha256.New()
	n, err := io.Copy(sum, r.Body)
	if err != nil {
		stdout.Lock()
		fmt.Fprintf(os.Stdout, "UPLOAD-ERROR %s %d %v\n", r.RequestURI, n, err)
		stdout.Unlock()
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(struct {
		Bytes  int64  `json:"bytes"`
		SHA256 string `json:"sha256"`
	}{n, hex.EncodeToString(sum.Sum(nil))})
}

// stdout serialises the lines scripts and tests wait for.
var stdout sync.Mutex

// wait shows cancellation: it returns when the client goes away.
func wait(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	stdout.Lock()
	fmt.Fprintf(os.Stdout, "WAITING /wait %s\n", r.RequestURI)
	stdout.Unlock()
	<-r.Context().Done()
	log.Printf("wait: context cancelled after %v", time.Since(start).Round(time.Millisecond))
	stdout.Lock()
	fmt.Fprintf(os.Stdout, "CANCELLED /wait %s\n", r.RequestURI)
	stdout.Unlock()
}

func queryInt(r *http.Request, name string, def, lo, hi int) int {
	v, err := strconv.Atoi(r.URL.Query().Get(name))
	if err != nil {
		return def
	}
	return min(max(v, lo), hi)
}

func main() {
	var frontEnds workerkit.FrontEndList
	flag.Var(&frontEnds, "frontend", workerkit.FrontEndUsage)
	flag.Var(frontEnds.Bind(), "bind", workerkit.BindUsage)
	httpAddr := flag.String("http", "", "serve the same handlers with plain net/http on `ADDR` instead (for benchmarks)")
	var curve workerkit.CurveFlags
	curve.Register(flag.CommandLine)
	flag.Parse()

	mux := http.NewServeMux()
	mux.HandleFunc("/stream", stream)
	mux.HandleFunc("/status/{code}", status)
	mux.HandleFunc("/big", big)
	mux.HandleFunc("POST /upload", upload)
	mux.HandleFunc("/wait", wait)
	mux.HandleFunc("/", anything)
	if *httpAddr != "" {
		if err := workerkit.ListenAndServeHTTP(*httpAddr, mux); err != nil {
			log.Fatal(err)
		}
		return
	}
	if len(frontEnds) == 0 {
		frontEnds = workerkit.FrontEndList{workerkit.DefaultFrontEnd}
	}
	if err := curve.Apply(frontEnds); err != nil {
		log.Fatal(err)
	}
	if err := workerkit.Serve(mux, frontEnds...); err != nil {
		log.Fatal(err)
	}
}
