// Command echo is a workerkit worker for trying out and debugging a front
// end: it shows exactly what a handler receives, and streams on request.
//
//	GET  /anything?x=1      JSON description of the request (method, URL, headers, body...)
//	POST /anything          same, with the body echoed
//	GET  /stream?n=5&ms=200 n lines, one every ms milliseconds, flushed as they are written
//	GET  /status/418        an empty response with that status
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"strconv"
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

func queryInt(r *http.Request, name string, def, lo, hi int) int {
	v, err := strconv.Atoi(r.URL.Query().Get(name))
	if err != nil {
		return def
	}
	return min(max(v, lo), hi)
}

func main() {
	var frontEnds workerkit.FrontEndList
	flag.Var(&frontEnds, "frontend", "front end `REQUESTS,REPLIES` endpoints (repeatable; default "+workerkit.DefaultFrontEnd.String()+")")
	flag.Parse()

	mux := http.NewServeMux()
	mux.HandleFunc("/stream", stream)
	mux.HandleFunc("/status/{code}", status)
	mux.HandleFunc("/", anything)
	if err := workerkit.Serve(mux, frontEnds...); err != nil {
		log.Fatal(err)
	}
}
