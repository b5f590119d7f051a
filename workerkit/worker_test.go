package workerkit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
)

// requestDump is what dumpHandler reports about the *http.Request it got.
type requestDump struct {
	Method        string
	Path          string
	RawPath       string
	RawQuery      string
	Proto         string
	ProtoMajor    int
	ProtoMinor    int
	Host          string
	RemoteAddr    string
	RequestURI    string
	TLS           bool
	Header        http.Header
	Body          string
	ContentLength int64
	NoBody        bool
	HasDeadline   bool
}

var dumpHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), 500)
		return
	}
	_, hasDeadline := r.Context().Deadline()
	d := requestDump{
		Method: r.Method, Path: r.URL.Path, RawPath: r.URL.RawPath, RawQuery: r.URL.RawQuery,
		Proto: r.Proto, ProtoMajor: r.ProtoMajor, ProtoMinor: r.ProtoMinor,
		Host: r.Host, RemoteAddr: r.RemoteAddr, RequestURI: r.RequestURI, TLS: r.TLS != nil,
		Header: r.Header, Body: string(body), ContentLength: r.ContentLength,
		NoBody: r.Body == http.NoBody, HasDeadline: hasDeadline,
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(d)
})

func field(name string, values ...string) mongrel2.Field {
	return mongrel2.Field{Name: name, Values: values}
}

func TestRequestMapping(t *testing.T) {
	f := newTestFE(t)
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: dumpHandler})

	tests := []struct {
		name  string
		req   treq
		check func(t *testing.T, d requestDump)
	}{
		{"GET with query", treq{uri: "/search?q=go&n=1"}, func(t *testing.T, d requestDump) {
			eq(t, "Method", d.Method, "GET")
			eq(t, "Path", d.Path, "/search")
			eq(t, "RawQuery", d.RawQuery, "q=go&n=1")
			eq(t, "RequestURI", d.RequestURI, "/search?q=go&n=1")
			eq(t, "Proto", d.Proto, "HTTP/1.1")
			eq(t, "ProtoMajor.Minor", fmt.Sprint(d.ProtoMajor, d.ProtoMinor), "1 1")
			eq(t, "Host", d.Host, "example.com")
			eq(t, "RemoteAddr", d.RemoteAddr, "127.0.0.1:0")
			eq(t, "TLS", d.TLS, false)
			eq(t, "NoBody", d.NoBody, true)
			eq(t, "ContentLength", d.ContentLength, int64(0))
			eq(t, "Host in Header", d.Header.Get("Host"), "")
		}},
		{"POST body", treq{method: "POST", uri: "/form", body: "a=1&b=2",
			headers: []mongrel2.Field{field("content-type", "application/x-www-form-urlencoded"), field("content-length", "7")}},
			func(t *testing.T, d requestDump) {
				eq(t, "Method", d.Method, "POST")
				eq(t, "Body", d.Body, "a=1&b=2")
				eq(t, "ContentLength", d.ContentLength, int64(7))
				eq(t, "Content-Type", d.Header.Get("Content-Type"), "application/x-www-form-urlencoded")
			}},
		{"repeated and canonicalised headers", treq{headers: []mongrel2.Field{
			field("accept", "text/html", "application/json"),
			field("x-custom-thing", "v"),
			field("cookie", "a=1", "b=2"),
		}}, func(t *testing.T, d requestDump) {
			eq(t, "Accept", strings.Join(d.Header["Accept"], "|"), "text/html|application/json")
			eq(t, "X-Custom-Thing", strings.Join(d.Header["X-Custom-Thing"], "|"), "v")
			eq(t, "Cookie", strings.Join(d.Header["Cookie"], "|"), "a=1|b=2")
		}},
		{"server keys stay out of the header map", treq{headers: []mongrel2.Field{field("method", "DELETE")}},
			func(t *testing.T, d requestDump) {
				eq(t, "Method", d.Method, "GET") // the client's "method" header is just a header
				eq(t, "client method header", d.Header.Get("Method"), "DELETE")
				for k := range d.Header {
					if k == strings.ToUpper(k) {
						t.Errorf("server key %q leaked into r.Header", k)
					}
					for _, bad := range []string{"Uri", "Path", "Version", "Url_scheme", "Remote_addr", "Pattern", "Query"} {
						if k == bad {
							t.Errorf("server key %q leaked into r.Header", k)
						}
					}
				}
			}},
		{"https and IPv6 client", treq{scheme: "https", remote: "2001:db8::1"}, func(t *testing.T, d requestDump) {
			eq(t, "TLS", d.TLS, true)
			eq(t, "RemoteAddr", d.RemoteAddr, "[2001:db8::1]:0")
		}},
		{"HTTP/2.0", treq{version: "HTTP/2.0"}, func(t *testing.T, d requestDump) {
			eq(t, "Proto", d.Proto, "HTTP/2.0")
			eq(t, "ProtoMajor.Minor", fmt.Sprint(d.ProtoMajor, d.ProtoMinor), "2 0")
		}},
		{"HTTP/1.0", treq{version: "HTTP/1.0"}, func(t *testing.T, d requestDump) {
			eq(t, "Proto", d.Proto, "HTTP/1.0")
			eq(t, "ProtoMajor.Minor", fmt.Sprint(d.ProtoMajor, d.ProtoMinor), "1 0")
		}},
		{"escaped path and query", treq{uri: "/a%20b/c%2Fd?x=%2F&y"}, func(t *testing.T, d requestDump) {
			eq(t, "Path", d.Path, "/a b/c/d")
			eq(t, "RawPath", d.RawPath, "/a%20b/c%2Fd")
			eq(t, "RawQuery", d.RawQuery, "x=%2F&y")
		}},
		{"custom method and host", treq{method: "PROPFIND", host: "api.example.org:8443"}, func(t *testing.T, d requestDump) {
			eq(t, "Method", d.Method, "PROPFIND")
			eq(t, "Host", d.Host, "api.example.org:8443")
		}},
		{"tnetstring headers", treq{format: mongrel2.FormatTNetString, method: "PUT", uri: "/t?x=1", body: "tns",
			headers: []mongrel2.Field{field("accept", "a", "b")}},
			func(t *testing.T, d requestDump) {
				eq(t, "Method", d.Method, "PUT")
				eq(t, "Path", d.Path, "/t")
				eq(t, "RawQuery", d.RawQuery, "x=1")
				eq(t, "Body", d.Body, "tns")
				eq(t, "Accept", strings.Join(d.Header["Accept"], "|"), "a|b")
			}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := strconv.Itoa(100 + i)
			f.request(conn, tt.req)
			r := f.readReply(conn, tt.req.method)
			if r.resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", r.resp.StatusCode, r.body)
			}
			var d requestDump
			if err := json.Unmarshal(r.body, &d); err != nil {
				t.Fatalf("%v: %s", err, r.body)
			}
			tt.check(t, d)
		})
	}
}

func eq[T comparable](t *testing.T, what string, got, want T) {
	t.Helper()
	if got != want {
		t.Errorf("%s = %#v, want %#v", what, got, want)
	}
}

func TestResponses(t *testing.T) {
	f := newTestFE(t)
	var handlerErr atomic.Value // error seen by a handler, as a string
	handlers := map[string]http.HandlerFunc{
		"/plain": func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "hello") },
		"/empty": func(w http.ResponseWriter, r *http.Request) {},
		"/html":  func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("<!DOCTYPE html><p>hi")) },
		"/typed": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/x-custom")
			_, _ = w.Write([]byte("<!DOCTYPE html>"))
		},
		"/nosniff": func(w http.ResponseWriter, r *http.Request) {
			w.Header()["Content-Type"] = nil
			_, _ = w.Write([]byte("<!DOCTYPE html>"))
		},
		"/created": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Location", "/things/1")
			w.WriteHeader(http.StatusCreated)
			_, _ = io.WriteString(w, "made")
		},
		"/notfound": http.NotFound,
		"/odd": func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(599)
			_, _ = io.WriteString(w, "odd")
		},
		"/nocontent": func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusNoContent)
			_, err := w.Write([]byte("x"))
			handlerErr.Store(fmt.Sprint(err))
		},
		"/notmodified": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("ETag", `"v1"`)
			w.WriteHeader(http.StatusNotModified)
		},
		"/headers": func(w http.ResponseWriter, r *http.Request) {
			h := w.Header()
			h.Add("Set-Cookie", "a=1")
			h.Add("Set-Cookie", "b=2")
			h["x-lower-case"] = []string{"v"}
			h.Set("X-Injected", "a\r\nX-Evil: 1")
			h["Bad Name"] = []string{"dropped"}
			h.Set("Date", "Mon, 02 Jan 2006 15:04:05 GMT")
			h.Set("Transfer-Encoding", "gzip") // framing is the writer's business
			_, _ = io.WriteString(w, "h")
		},
		"/length": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "5")
			_, _ = io.WriteString(w, "12345")
			_, err := io.WriteString(w, "6")
			handlerErr.Store(fmt.Sprint(err))
		},
		"/twice": func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusAccepted)
			w.WriteHeader(http.StatusTeapot)
		},
		"/early-hints": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Link", "</s.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			_, _ = io.WriteString(w, "final")
		},
	}
	mux := http.NewServeMux()
	for p, h := range handlers {
		mux.Handle(p, h)
	}
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: mux})

	tests := []struct {
		name, method, path string
		status             int
		body               string
		hdr                map[string]string // "" = must be absent
		raw                []string          // substrings of the raw stream
		notRaw             []string
		handlerErr         string
	}{
		{name: "plain", path: "/plain", status: 200, body: "hello",
			hdr: map[string]string{"Content-Length": "5", "Content-Type": "text/plain; charset=utf-8", "Transfer-Encoding": ""},
			raw: []string{"HTTP/1.1 200 OK\r\n", "\r\nDate: "}},
		{name: "empty handler", path: "/empty", status: 200, body: "", hdr: map[string]string{"Content-Length": "0", "Content-Type": ""}},
		{name: "sniffed html", path: "/html", status: 200, body: "<!DOCTYPE html><p>hi", hdr: map[string]string{"Content-Type": "text/html; charset=utf-8"}},
		{name: "explicit type kept", path: "/typed", status: 200, body: "<!DOCTYPE html>", hdr: map[string]string{"Content-Type": "application/x-custom"}},
		{name: "nil type suppresses sniffing", path: "/nosniff", status: 200, body: "<!DOCTYPE html>", hdr: map[string]string{"Content-Type": ""}},
		{name: "201", path: "/created", status: 201, body: "made", hdr: map[string]string{"Location": "/things/1"}, raw: []string{"HTTP/1.1 201 Created\r\n"}},
		{name: "404", path: "/notfound", status: 404, body: "404 page not found\n", raw: []string{"HTTP/1.1 404 Not Found\r\n"}},
		{name: "unknown status text", path: "/odd", status: 599, body: "odd", raw: []string{"HTTP/1.1 599 status code 599\r\n"}},
		{name: "204 has no body", path: "/nocontent", status: 204, body: "",
			hdr: map[string]string{"Content-Length": "", "Transfer-Encoding": ""}, handlerErr: http.ErrBodyNotAllowed.Error()},
		{name: "304 has no body", path: "/notmodified", status: 304, body: "", hdr: map[string]string{"Etag": `"v1"`, "Content-Length": ""}},
		{name: "HEAD", method: "HEAD", path: "/plain", status: 200, body: "",
			hdr: map[string]string{"Content-Length": "5", "Content-Type": "text/plain; charset=utf-8"}, notRaw: []string{"hello"}},
		{name: "HEAD of HTML sniffs", method: "HEAD", path: "/html", status: 200, body: "",
			hdr: map[string]string{"Content-Type": "text/html; charset=utf-8", "Content-Length": "20"}},
		{name: "headers written canonical and sanitised", path: "/headers", status: 200, body: "h",
			hdr:    map[string]string{"Date": "Mon, 02 Jan 2006 15:04:05 GMT", "Transfer-Encoding": "", "Content-Length": "1"},
			raw:    []string{"\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n", "\r\nX-Lower-Case: v\r\n", "\r\nX-Injected: a  X-Evil: 1\r\n"},
			notRaw: []string{"\r\nX-Evil", "Bad Name", "x-lower-case", "gzip"}},
		{name: "declared length", path: "/length", status: 200, body: "12345",
			hdr: map[string]string{"Content-Length": "5"}, handlerErr: http.ErrContentLength.Error()},
		{name: "superfluous WriteHeader", path: "/twice", status: 202, body: ""},
		{name: "WebSocket handshake not accepted gets the handler's answer", method: "WEBSOCKET_HANDSHAKE", path: "/plain", status: 200,
			body: "hello"},
		{name: "1xx goes out first", path: "/early-hints", status: 200, body: "final",
			raw: []string{"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			handlerErr.Store("")
			conn := strconv.Itoa(200 + i)
			method := tt.method
			if method == "" {
				method = "GET"
			}
			f.request(conn, treq{method: method, uri: tt.path})
			var r *reply
			if tt.path == "/early-hints" {
				// http.ReadResponse returns the 103 first; read on.
				hints := f.readReply(conn, method)
				eq(t, "first status", hints.resp.StatusCode, 103)
				r = f.readReply(conn, method)
				r.raw = append(hints.raw, r.raw...)
			} else {
				r = f.readReply(conn, method)
			}
			if r.bodyErr != nil {
				t.Fatalf("body: %v", r.bodyErr)
			}
			eq(t, "status", r.resp.StatusCode, tt.status)
			eq(t, "body", string(r.body), tt.body)
			eq(t, "trailing bytes", r.trailing, 0)
			eq(t, "closed", r.closed, false)
			if r.resp.Header.Get("Date") == "" {
				t.Error("no Date header")
			}
			for k, v := range tt.hdr {
				if v == "" {
					if vs, ok := r.resp.Header[k]; ok {
						t.Errorf("header %s = %q, want none", k, vs)
					}
					continue
				}
				eq(t, "header "+k, r.resp.Header.Get(k), v)
			}
			for _, s := range tt.raw {
				if !bytes.Contains(r.raw, []byte(s)) {
					t.Errorf("raw response lacks %q:\n%s", s, r.raw)
				}
			}
			for _, s := range tt.notRaw {
				if bytes.Contains(r.raw, []byte(s)) {
					t.Errorf("raw response contains %q:\n%s", s, r.raw)
				}
			}
			if tt.handlerErr != "" {
				eq(t, "error seen by handler", handlerErr.Load().(string), tt.handlerErr)
			}
		})
	}
}

// A flushing handler's bytes reach the front end while it is still running.
func TestStreaming(t *testing.T) {
	f := newTestFE(t)
	release := make(chan struct{})
	ctlErr := make(chan error, 1)
	h := func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "first;")
		w.(http.Flusher).Flush()
		<-release
		rc := http.NewResponseController(w)
		_, _ = io.WriteString(w, "second;")
		if err := rc.Flush(); err != nil {
			ctlErr <- err
			return
		}
		ctlErr <- rc.SetWriteDeadline(time.Time{})
		_, _ = io.WriteString(w, "third")
	}
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: http.HandlerFunc(h)})

	f.request("1", treq{uri: "/stream"})
	first, err := f.next("1", waitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	// The head and the first chunk arrived while the handler is blocked.
	if !bytes.HasPrefix(first, []byte("HTTP/1.1 200 OK\r\n")) ||
		!bytes.Contains(first, []byte("\r\nTransfer-Encoding: chunked\r\n")) ||
		!bytes.HasSuffix(first, []byte("\r\n\r\n6\r\nfirst;\r\n")) {
		t.Fatalf("first frame = %q", first)
	}
	close(release)
	r := f.readReply("1", "GET", first)
	eq(t, "body", string(r.body), "first;second;third")
	eq(t, "Transfer-Encoding", strings.Join(r.resp.TransferEncoding, ","), "chunked")
	if len(r.frames) < 3 {
		t.Errorf("want >= 3 frames (head+chunk, flushed chunk, last chunk+end), got %d: %q", len(r.frames), r.frames)
	}
	if !bytes.HasSuffix(r.raw, []byte("0\r\n\r\n")) {
		t.Errorf("stream does not end with the last chunk: %q", r.raw)
	}
	if err := recvWithin(t, ctlErr, "handler"); !errors.Is(err, http.ErrNotSupported) {
		t.Errorf("SetWriteDeadline: %v, want ErrNotSupported", err)
	}
}

// HTTP/1.0 clients do not understand chunked encoding: stream, then close.
func TestStreamingHTTP10(t *testing.T) {
	f := newTestFE(t)
	h := func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "a")
		w.(http.Flusher).Flush()
		_, _ = io.WriteString(w, "b")
	}
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: http.HandlerFunc(h)})
	f.request("1", treq{version: "HTTP/1.0"})
	r := f.readReply("1", "GET")
	eq(t, "body", string(r.body), "ab")
	eq(t, "closed", r.closed, true)
	eq(t, "chunked", len(r.resp.TransferEncoding), 0)
	eq(t, "resp.Close", r.resp.Close, true)
	if !bytes.Contains(r.raw, []byte("\r\nConnection: close\r\n")) {
		t.Errorf("no Connection: close in %q", r.raw)
	}
}

func TestLargeBodies(t *testing.T) {
	f := newTestFE(t)
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	mux := http.NewServeMux()
	mux.HandleFunc("/one-write", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(big) })
	mux.HandleFunc("/with-length", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(big)))
		_, _ = w.Write(big)
	})
	mux.HandleFunc("/small-writes", func(w http.ResponseWriter, r *http.Request) {
		for p := big; len(p) > 0; p = p[1000:] {
			if len(p) < 1000 {
				_, _ = w.Write(p)
				break
			}
			_, _ = w.Write(p[:1000])
		}
	})
	mux.HandleFunc("/just-fits", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(big[:bufSize]) })
	mux.HandleFunc("/short", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "10")
		_, _ = io.WriteString(w, "12345")
	})
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: mux})

	tests := []struct {
		path      string
		want      []byte
		chunked   bool
		minFrames int
		maxFrames int
		closed    bool
	}{
		{"/one-write", big, true, 4, 6, false},
		{"/with-length", big, false, 4, 6, false},
		{"/small-writes", big, true, 4, 20, false},
		{"/just-fits", big[:bufSize], false, 1, 1, false},
	}
	for i, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			conn := strconv.Itoa(300 + i)
			f.request(conn, treq{uri: tt.path})
			r := f.readReply(conn, "GET")
			if r.bodyErr != nil {
				t.Fatal(r.bodyErr)
			}
			if !bytes.Equal(r.body, tt.want) {
				t.Fatalf("body differs: got %d bytes, want %d", len(r.body), len(tt.want))
			}
			eq(t, "chunked", len(r.resp.TransferEncoding) > 0, tt.chunked)
			if n := len(r.frames); n < tt.minFrames || n > tt.maxFrames {
				t.Errorf("%d frames, want %d..%d", n, tt.minFrames, tt.maxFrames)
			}
			for i, fr := range r.frames {
				if len(fr) > maxMsgBody+1024 {
					t.Errorf("frame %d has %d bytes, more than the %d bound", i, len(fr), maxMsgBody)
				}
			}
			eq(t, "trailing", r.trailing, 0)
		})
	}
	t.Run("short of declared length closes", func(t *testing.T) {
		f.request("399", treq{uri: "/short"})
		first, err := f.next("399", waitTimeout)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasSuffix(first, []byte("\r\nContent-Length: 10\r\n\r\n12345")) {
			t.Fatalf("frame = %q", first)
		}
		f.expectClose("399")
	})
}

func TestPanics(t *testing.T) {
	f := newTestFE(t)
	logs := &logBuffer{}
	mux := http.NewServeMux()
	mux.HandleFunc("/early", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Partial", "1")
		_, _ = io.WriteString(w, "partial")
		panic("boom-early")
	})
	mux.HandleFunc("/late", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		panic("boom-late")
	})
	mux.HandleFunc("/abort", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "never sent")
		panic(http.ErrAbortHandler)
	})
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "alive") })
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: mux, Logger: slogTo(logs)})

	t.Run("before the head: 500", func(t *testing.T) {
		f.request("1", treq{uri: "/early"})
		r := f.readReply("1", "GET")
		eq(t, "status", r.resp.StatusCode, 500)
		eq(t, "body", string(r.body), "Internal Server Error\n")
		eq(t, "X-Partial", r.resp.Header.Get("X-Partial"), "")
	})
	t.Run("after the head: stream is closed", func(t *testing.T) {
		f.request("2", treq{uri: "/late"})
		r := f.readReply("2", "GET")
		eq(t, "status", r.resp.StatusCode, 200)
		if !errors.Is(r.bodyErr, io.ErrUnexpectedEOF) {
			t.Errorf("body error %v, want unexpected EOF", r.bodyErr)
		}
		eq(t, "body so far", string(r.body), "partial")
		eq(t, "closed", r.closed, true)
	})
	t.Run("ErrAbortHandler: close, no response", func(t *testing.T) {
		f.request("3", treq{uri: "/abort"})
		f.expectClose("3")
	})
	t.Run("worker still serves", func(t *testing.T) {
		f.request("4", treq{uri: "/ok"})
		r := f.readReply("4", "GET")
		eq(t, "body", string(r.body), "alive")
	})
	out := logs.String()
	for _, want := range []string{"boom-early", "boom-late", "worker_test.go"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q", want)
		}
	}
	if strings.Count(out, "panic serving request") != 2 {
		t.Errorf("want exactly 2 panics logged (ErrAbortHandler is silent):\n%s", out)
	}
}

func TestConcurrencyBound(t *testing.T) {
	f := newTestFE(t)
	const limit, total = 3, 12
	var running, peak atomic.Int32
	release := make(chan struct{})
	h := func(w http.ResponseWriter, r *http.Request) {
		n := running.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		<-release
		running.Add(-1)
		_, _ = io.WriteString(w, r.URL.Path)
	}
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: http.HandlerFunc(h), MaxConcurrent: limit})
	for i := range total {
		f.request(strconv.Itoa(i), treq{uri: "/" + strconv.Itoa(i)})
	}
	waitUntil(t, "handlers to fill all slots", func() bool { return running.Load() == limit })
	close(release)
	for i := range total {
		r := f.readReply(strconv.Itoa(i), "GET")
		eq(t, "body", string(r.body), "/"+strconv.Itoa(i))
	}
	eq(t, "peak concurrency", peak.Load(), int32(limit))
}

// A fresh worker must not lose replies to the slow-joiner effect: every
// request of a burst sent as soon as it connects is answered.
func TestBurstAtStartup(t *testing.T) {
	f := newTestFE(t)
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: dumpHandler})
	const n = 50
	for i := range n {
		f.request(strconv.Itoa(i), treq{})
	}
	for i := range n {
		r := f.readReply(strconv.Itoa(i), "GET")
		eq(t, "status", r.resp.StatusCode, 200)
	}
}

func TestDisconnectCancelsContext(t *testing.T) {
	f := newTestFE(t)
	started := make(chan string, 4)
	cancelled := make(chan string, 4)
	h := func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/quick" {
			return
		}
		started <- r.URL.Path
		<-r.Context().Done()
		cancelled <- r.URL.Path
		// Writing to a client that is gone fails.
		if _, err := io.WriteString(w, strings.Repeat("x", bufSize+1)); err == nil {
			cancelled <- "write succeeded"
		}
	}
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: http.HandlerFunc(h)})

	f.request("7", treq{uri: "/seven"})
	recvWithin(t, started, "handler start")

	// A notice for another connection, or for the same id from another
	// sender, leaves the request alone. The quick request after them proves
	// the worker has processed both notices (one request socket, in order).
	f.send(mongrel2.AppendDisconnect(nil, f.sender, "8"))
	f.send(mongrel2.AppendDisconnect(nil, "other-sender", "7"))
	f.request("9", treq{uri: "/quick"})
	f.readReply("9", "GET")
	select {
	case p := <-cancelled:
		t.Fatalf("%s cancelled by a notice for another connection", p)
	default:
	}

	f.send(mongrel2.AppendDisconnect(nil, f.sender, "7"))
	eq(t, "cancelled", recvWithin(t, cancelled, "cancellation"), "/seven")
	f.request("10", treq{uri: "/quick"})
	f.readReply("10", "GET")
	select {
	case p := <-cancelled:
		t.Fatalf("after cancellation: %s", p)
	default:
	}
}

func TestMalformedFramesIgnored(t *testing.T) {
	f := newTestFE(t)
	logs := &logBuffer{}
	var calls atomic.Int32
	h := func(w http.ResponseWriter, r *http.Request) { calls.Add(1); _, _ = io.WriteString(w, "ok") }
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: http.HandlerFunc(h), Logger: slogTo(logs)})

	bad := [][]byte{
		nil,
		[]byte("garbage"),
		[]byte(f.sender + " 1 / 3:abc,"),
		[]byte(f.sender + " x / 2:{},0:,"),
		[]byte(f.sender + " 1 / 99:{},0:,"),
		[]byte(f.sender + " 1 / 2:{},5:ab,"),
		mongrel2.AppendRequest(nil, f.sender, "1", "@*", []byte(`{"METHOD":"JSON"}`), []byte(`{"type":"other"}`)),
		mongrel2.AppendRequest(nil, f.sender, "1", "/", []byte(`{"a":"b"}`), nil), // parses, but has no METHOD
		f.frame("1", treq{method: "BAD METHOD"}),
		f.frame("1", treq{uri: "/%zz"}),
	}
	for _, b := range bad {
		f.send(b)
	}
	f.request("2", treq{})
	r := f.readReply("2", "GET")
	eq(t, "body", string(r.body), "ok")
	eq(t, "handler calls", calls.Load(), int32(1))
	// Requests that parse but cannot become an *http.Request get a 400.
	for range 3 {
		r := f.readReply("1", "GET")
		eq(t, "status", r.resp.StatusCode, 400)
	}
	if n := strings.Count(logs.String(), "dropping malformed request frame"); n != 6 {
		t.Errorf("%d malformed frames logged, want 6:\n%s", n, logs.String())
	}
}

// While the front end is away (unsubscribed), the worker takes no work from
// it; when it is back, the waiting request is served.
func TestPauseWhileFrontEndAway(t *testing.T) {
	f := newTestFE(t)
	var seq atomic.Int64
	events := make(chan bool, 8)
	var activeSeq atomic.Int64
	testHookActive = func(_ int, active bool) {
		if active {
			activeSeq.Store(seq.Add(1))
		}
		events <- active
	}
	t.Cleanup(func() { testHookActive = nil })
	var handlerSeq atomic.Int64
	h := func(w http.ResponseWriter, r *http.Request) {
		handlerSeq.Store(seq.Add(1))
		_, _ = io.WriteString(w, r.URL.Path)
	}
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: http.HandlerFunc(h)})

	f.request("1", treq{uri: "/before"})
	eq(t, "body", string(f.readReply("1", "GET").body), "/before")
	eq(t, "first event", recvWithin(t, events, "subscription"), true)

	f.closeSub()
	eq(t, "event after the front end left", recvWithin(t, events, "unsubscription"), false)
	f.request("2", treq{uri: "/while-away"})

	f.rebindSub()
	// Touch the new SUB until the worker has re-attached and re-subscribed.
	var back bool
	waitUntil(t, "re-subscription", func() bool {
		_, _ = f.sub.GetEvents()
		select {
		case back = <-events:
			return true
		default:
			return false
		}
	})
	eq(t, "event after the front end came back", back, true)
	r := f.readReply("2", "GET")
	eq(t, "body", string(r.body), "/while-away")
	if handlerSeq.Load() < activeSeq.Load() {
		t.Errorf("request served while the front end was away (handler seq %d, re-subscribed at %d)",
			handlerSeq.Load(), activeSeq.Load())
	}
}

// Replies go back through the front end the request came from.
func TestMultipleFrontEnds(t *testing.T) {
	a, b := newTestFE(t), newTestFE(t) // same sender UUID on purpose
	h := func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, r.Host) }
	startWorker(t, &Worker{FrontEnds: []FrontEnd{a.fe, b.fe}, Handler: http.HandlerFunc(h)})
	for i := range 5 {
		conn := strconv.Itoa(i)
		a.request(conn, treq{host: "a"})
		b.request(conn, treq{host: "b"})
	}
	for i := range 5 {
		conn := strconv.Itoa(i)
		eq(t, "from a", string(a.readReply(conn, "GET").body), "a")
		eq(t, "from b", string(b.readReply(conn, "GET").body), "b")
	}
}

// Shutdown: stop taking work, finish what is held, then return.
func TestGracefulShutdown(t *testing.T) {
	f := newTestFE(t)
	started := make(chan string, 8)
	release := make(chan struct{})
	var served sync.Map
	h := func(w http.ResponseWriter, r *http.Request) {
		started <- r.URL.Path
		served.Store(r.URL.Path, true)
		if r.URL.Path == "/slow" {
			<-release
		}
		_, _ = io.WriteString(w, "done "+r.URL.Path)
	}
	w := startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: http.HandlerFunc(h), MaxConcurrent: 1})

	f.request("1", treq{uri: "/slow"})
	eq(t, "started", recvWithin(t, started, "slow handler"), "/slow")
	// With the only slot busy, these wait in the worker's queue (or in
	// transit to it).
	f.request("2", treq{uri: "/queued-a"})
	f.request("3", treq{uri: "/queued-b"})

	w.cancel()
	// The worker disconnects its request socket while still busy...
	waitUntil(t, "the worker to disconnect from the request endpoint", func() bool { return !f.pushHasPeer() })
	if w.returned() {
		t.Fatal("Serve returned with a handler still running")
	}
	// ...and finishes the request it holds once the handler returns.
	close(release)
	eq(t, "reply", string(f.readReply("1", "GET").body), "done /slow")
	if err := w.stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	// Whatever reached the worker before it disconnected is served too.
	// (Messages still in transit when the connection closed are lost, as
	// always with PUSH/PULL; the front end's timeout covers those.)
	n := 0
	for _, c := range []struct{ conn, path string }{{"2", "/queued-a"}, {"3", "/queued-b"}} {
		if _, ok := served.Load(c.path); ok {
			n++
			eq(t, "queued reply", string(f.readReply(c.conn, "GET").body), "done "+c.path)
		}
	}
	t.Logf("%d of 2 queued requests reached the worker and were answered", n)
}

// A handler still running at ShutdownTimeout has its context cancelled.
func TestShutdownTimeoutCancelsHandlers(t *testing.T) {
	f := newTestFE(t)
	started := make(chan struct{}, 1)
	h := func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-r.Context().Done()
	}
	w := startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: http.HandlerFunc(h), ShutdownTimeout: 50 * time.Millisecond})
	f.request("1", treq{})
	recvWithin(t, started, "handler start")
	if err := w.stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

func TestServeErrors(t *testing.T) {
	fe := FrontEnd{Requests: "tcp://127.0.0.1:1", Replies: "tcp://127.0.0.1:2"}
	tests := []struct {
		name string
		w    Worker
		want string
	}{
		{"no handler", Worker{FrontEnds: []FrontEnd{fe}}, "Handler is nil"},
		{"no front ends", Worker{Handler: dumpHandler}, "no front ends"},
		{"bad endpoint", Worker{Handler: dumpHandler, FrontEnds: []FrontEnd{{Requests: "tcp://x", Replies: fe.Replies}}}, "host:port"},
		{"endpoint libzmq refuses", Worker{Handler: dumpHandler, FrontEnds: []FrontEnd{{Requests: fe.Requests, Replies: "ipc:///tmp/" + strings.Repeat("x", 200)}}}, "reply socket"},
		{"bad control endpoint", Worker{Handler: dumpHandler, FrontEnds: []FrontEnd{{Requests: fe.Requests, Replies: fe.Replies, Control: "tcp://c:*"}}}, "control endpoint"},
		{"control endpoint libzmq refuses", Worker{Handler: dumpHandler, FrontEnds: []FrontEnd{{Requests: fe.Requests, Replies: fe.Replies, Control: "ipc:///tmp/" + strings.Repeat("x", 200)}}}, "control socket"},
		{"bad worker id", Worker{Handler: dumpHandler, FrontEnds: []FrontEnd{fe}, ID: "two words"}, "Worker.ID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.w.Logger = testLogger(t)
			ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
			defer cancel()
			base := runtime.NumGoroutine()
			err := tt.w.Serve(ctx)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.want)
			}
			waitGoroutines(t, base) // a failed start leaves nothing behind
		})
	}
}

func TestParseFrontEnd(t *testing.T) {
	tests := []struct {
		in   string
		want FrontEnd
		err  bool
	}{
		{in: "tcp://127.0.0.1:9997,tcp://127.0.0.1:9996", want: DefaultFrontEnd},
		{in: " tcp://h:1 , tcp://h:2 ", want: FrontEnd{Requests: "tcp://h:1", Replies: "tcp://h:2"}},
		{in: "tcp://[::1]:1,ipc:///tmp/rep", want: FrontEnd{Requests: "tcp://[::1]:1", Replies: "ipc:///tmp/rep"}},
		{in: "tcp://eth0;10.0.0.1:5,tcp://h:6", want: FrontEnd{Requests: "tcp://eth0;10.0.0.1:5", Replies: "tcp://h:6"}},
		{in: "tcp://a:1,tcp://b:2,tcp://c:3", want: FrontEnd{Requests: "tcp://a:1", Replies: "tcp://b:2", Control: "tcp://c:3"}},
		{in: " tcp://a:1 , tcp://b:2 , ipc:///run/ctl ", want: FrontEnd{Requests: "tcp://a:1", Replies: "tcp://b:2", Control: "ipc:///run/ctl"}},
		{in: "tcp://127.0.0.1:9997", err: true},
		{in: "tcp://a:1,tcp://b:2,", err: true},
		{in: "tcp://a:1,tcp://b:2, ", err: true},
		{in: "tcp://a:1,tcp://b:2,tcp://c:*", err: true},
		{in: "tcp://a:1,tcp://b:2,inproc://c", err: true},
		{in: "tcp://a:1,tcp://b:2,tcp://c:3,tcp://d:4", err: true},
		{in: "tcp://a:*,tcp://b:2", err: true},
		{in: "tcp://a:0,tcp://b:2", err: true},
		{in: "tcp://a:70000,tcp://b:2", err: true},
		{in: "tcp://a,tcp://b:2", err: true},
		{in: "inproc://x,inproc://y", err: true},
		{in: "http://a:1,tcp://b:2", err: true},
		{in: "a:1,b:2", err: true},
		{in: "tcp://a :1,tcp://b:2", err: true},
		{in: "", err: true},
		{in: "tcp://*:1,tcp://b:2", err: true}, // * binds; a worker connects
		// bind mode
		{in: "bind:tcp://*:7001,tcp://*:7002", want: FrontEnd{Requests: "tcp://*:7001", Replies: "tcp://*:7002", Bind: true}},
		{in: "bind: tcp://127.0.0.1:7001 , ipc:///run/rep ", want: FrontEnd{Requests: "tcp://127.0.0.1:7001", Replies: "ipc:///run/rep", Bind: true}},
		{in: "bind:tcp://eth0:7001,tcp://[::1]:7002", want: FrontEnd{Requests: "tcp://eth0:7001", Replies: "tcp://[::1]:7002", Bind: true}},
		{in: "bind:tcp://*:7001,tcp://*:7002,tcp://c:3", err: true}, // no control channel in bind mode
		{in: "bind:tcp://*:7001", err: true},
		{in: "bind:tcp://*:*,tcp://*:7002", err: true},
		{in: "bind:tcp://*:7001,tcp://*:7001", err: true},
		{in: "bind:tcp://eth0;10.0.0.1:5,tcp://*:6", err: true},
		{in: "bind:inproc://a,inproc://b", err: true},
		{in: "BIND:tcp://*:7001,tcp://*:7002", err: true},
	}
	for _, tt := range tests {
		got, err := ParseFrontEnd(tt.in)
		if (err != nil) != tt.err || (err == nil && got != tt.want) {
			t.Errorf("ParseFrontEnd(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.err)
		}
	}
	for _, fe := range []FrontEnd{DefaultFrontEnd, {Requests: "tcp://a:1", Replies: "tcp://b:2", Control: "tcp://c:3"},
		{Requests: "tcp://*:1", Replies: "tcp://*:2", Bind: true}} {
		again, err := ParseFrontEnd(fe.String())
		if err != nil || again != fe {
			t.Errorf("%+v does not round-trip through String (%q): %+v, %v", fe, fe.String(), again, err)
		}
	}
	var l FrontEndList
	must(t, l.Set("tcp://a:1,tcp://a:2"))
	must(t, l.Set("tcp://b:1,tcp://b:2,tcp://b:3"))
	if l.Set("nope") == nil {
		t.Error("FrontEndList.Set accepted garbage")
	}
	eq(t, "FrontEndList", l.String(), "tcp://a:1,tcp://a:2 tcp://b:1,tcp://b:2,tcp://b:3")

	// -bind X,Y is -frontend bind:X,Y; both flags fill one list.
	var fl FrontEndList
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Var(&fl, "frontend", FrontEndUsage)
	fs.Var(fl.Bind(), "bind", BindUsage)
	must(t, fs.Parse([]string{"-frontend", "tcp://a:1,tcp://a:2", "-bind", "tcp://*:7001,tcp://*:7002",
		"-frontend", "bind:tcp://*:7003,tcp://*:7004", "-bind", "bind:ipc:///r,ipc:///s"}))
	eq(t, "-frontend and -bind", fl.String(),
		"tcp://a:1,tcp://a:2 bind:tcp://*:7001,tcp://*:7002 bind:tcp://*:7003,tcp://*:7004 bind:ipc:///r,ipc:///s")
	eq(t, "-bind value", fl.Bind().String(), "tcp://*:7001,tcp://*:7002 tcp://*:7003,tcp://*:7004 ipc:///r,ipc:///s")
	for _, bad := range []string{"tcp://*:7001,tcp://*:7002,tcp://*:7003", "tcp://*:7001"} {
		if err := fs.Parse([]string{"-bind", bad}); err == nil {
			t.Errorf("-bind %s accepted", bad)
		}
	}
}

func FuzzParseFrontEnd(f *testing.F) {
	for _, s := range []string{"tcp://127.0.0.1:9997,tcp://127.0.0.1:9996", "ipc:///a,ipc:///b", "tcp://[::1]:1,tcp://x;y:2", ",", "tcp://:,",
		"tcp://a:1,tcp://b:2,tcp://c:3", ",,", "bind:tcp://*:1,tcp://*:2", "bind:ipc:///a,ipc:///b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		fe, err := ParseFrontEnd(s)
		if err != nil {
			return
		}
		again, err := ParseFrontEnd(fe.String())
		if err != nil || again != fe {
			t.Fatalf("%q parsed to %v, which does not round-trip: %v, %v", s, fe, again, err)
		}
		if strings.ContainsAny(fe.Requests+fe.Replies+fe.Control, ", \t\r\n") {
			t.Fatalf("%q: endpoint with separator or space: %v", s, fe)
		}
	})
}

func slogTo(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
