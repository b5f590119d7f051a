package main

import (
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
)

// With -handler, the floor answers through a net/http Handler, as any
// library that serves a Handler behind ZeroMQ must: the least it takes to
// give the handler a real *http.Request (method, URL, protocol, header
// map, Host, RemoteAddr) and to render what it wrote (status line, its
// headers, Date, Content-Length, the body). Still one loop on one
// goroutine, no flow control, no cancellation, no slots: what separates
// workerkit from this is what workerkit adds beyond serving a Handler.

// hello is workerkit's hello example's handler.
func hello(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, helloBody)
}

// handlerFloor renders a Handler's responses into a buffer it reuses.
type handlerFloor struct {
	h   http.Handler
	out []byte
}

// answer runs the handler for r and returns the HTTP response it wrote.
func (f *handlerFloor) answer(r *mongrel2.Request) []byte {
	req, err := f.request(r)
	if err != nil {
		return append(f.out[:0], "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"...)
	}
	w := floorWriter{header: make(http.Header, 1)}
	f.h.ServeHTTP(&w, req)
	return f.render(&w)
}

// request builds the *http.Request a handler gets.
func (f *handlerFloor) request(r *mongrel2.Request) (*http.Request, error) {
	req := &http.Request{Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Body: http.NoBody,
		Header: make(http.Header, len(r.Headers))}
	for i := range r.Headers {
		h := &r.Headers[i]
		switch h.Name {
		case "METHOD":
			req.Method = h.Value()
		case "URI":
			req.RequestURI = h.Value()
		case "REMOTE_ADDR":
			req.RemoteAddr = h.Value()
		case "host":
			req.Host = h.Value()
		default:
			if !mongrel2.IsServerKey(h.Name) {
				req.Header[textproto.CanonicalMIMEHeaderKey(h.Name)] = h.Values
			}
		}
	}
	u, err := url.ParseRequestURI(req.RequestURI)
	req.URL = u
	return req, err
}

// render writes the status line, the handler's headers (sorted), Date,
// Content-Length and the body.
func (f *handlerFloor) render(w *floorWriter) []byte {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	b := append(f.out[:0], "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(w.status), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(w.status)...)
	b = append(b, "\r\n"...)
	if _, ok := w.header["Content-Type"]; !ok && len(w.body) > 0 {
		w.header["Content-Type"] = []string{http.DetectContentType(w.body)}
	}
	keys := make([]string, 0, len(w.header))
	for k := range w.header {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, v := range w.header[k] {
			b = append(b, k...)
			b = append(b, ": "...)
			b = append(b, v...)
			b = append(b, "\r\n"...)
		}
	}
	b = append(b, "Date: "...)
	b = time.Now().UTC().AppendFormat(b, http.TimeFormat)
	b = append(b, "\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(w.body)), 10)
	b = append(b, "\r\n\r\n"...)
	f.out = append(b, w.body...)
	return f.out
}

// floorWriter is the least http.ResponseWriter: it keeps what is written.
type floorWriter struct {
	header http.Header
	status int
	body   []byte
}

func (w *floorWriter) Header() http.Header { return w.header }

func (w *floorWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}

func (w *floorWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	w.body = append(w.body, p...)
	return len(p), nil
}
