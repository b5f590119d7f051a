package httpreply

import (
	"net/http/httptest"
	"strings"
	"testing"
)

func TestResponseReader(t *testing.T) {
	tests := []struct {
		name       string
		frames     []string
		head       bool
		wantStatus int
		wantBody   string
		wantHeader map[string]string
		wantDone   bool
		wantErr    bool
	}{
		{name: "content-length one frame", frames: []string{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello"},
			wantStatus: 200, wantBody: "hello", wantHeader: map[string]string{"X-A": "b"}, wantDone: true},
		{name: "content-length body in a later frame", frames: []string{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "hello"},
			wantStatus: 200, wantBody: "hello", wantHeader: map[string]string{"Content-Length": "5"}, wantDone: true},
		{name: "head split across frames", frames: []string{"HTTP/1.1 201 Cre", "ated\r\nContent-Le", "ngth: 3\r", "\n\r\nab", "c"},
			wantStatus: 201, wantBody: "abc", wantDone: true},
		{name: "bare LF", frames: []string{"HTTP/1.0 404 Not Found\nContent-Length: 2\n\nno"}, wantStatus: 404, wantBody: "no", wantDone: true},
		{name: "no reason phrase", frames: []string{"HTTP/1.1 204\r\n\r\n"}, wantStatus: 204, wantDone: true},
		{name: "chunked", frames: []string{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", "lo\r\n6;ext=1\r\n, worl\r\n1\r\nd\r\n0\r\nX-Trailer: 1\r\n\r\n"},
			wantStatus: 200, wantBody: "hello, world", wantDone: true, wantHeader: map[string]string{"Transfer-Encoding": ""}},
		{name: "chunked byte by byte", frames: strings.Split("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", ""),
			wantStatus: 200, wantBody: "abc", wantDone: true},
		{name: "close delimited", frames: []string{"HTTP/1.1 200 OK\r\n\r\nsome", " more", ""}, wantStatus: 200, wantBody: "some more", wantDone: true},
		{name: "close delimited still open", frames: []string{"HTTP/1.1 200 OK\r\n\r\nsome"}, wantStatus: 200, wantBody: "some"},
		{name: "extra bytes past length ignored", frames: []string{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA"}, wantStatus: 200, wantBody: "ok", wantDone: true},
		{name: "hop-by-hop dropped", frames: []string{"HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nX-Keep: 1\r\nContent-Length: 0\r\n\r\n"},
			wantStatus: 200, wantDone: true, wantHeader: map[string]string{"X-Hop": "", "Connection": "", "Keep-Alive": "", "X-Keep": "1"}},
		{name: "HEAD has no body", head: true, frames: []string{"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"},
			wantStatus: 200, wantDone: true, wantHeader: map[string]string{"Content-Length": "10"}},
		{name: "100 continue skipped", frames: []string{"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"}, wantStatus: 200, wantBody: "x", wantDone: true},
		{name: "lower-case header names", frames: []string{"HTTP/1.1 200 OK\r\ncontent-type: text/x\r\ncontent-length: 1\r\n\r\nx"},
			wantStatus: 200, wantBody: "x", wantDone: true, wantHeader: map[string]string{"Content-Type": "text/x"}},
		{name: "close before head", frames: []string{"HTTP/1.1 200 OK\r\n", ""}, wantErr: true},
		{name: "close mid body", frames: []string{"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", ""}, wantStatus: 200, wantBody: "abc", wantErr: true},
		{name: "garbage", frames: []string{"garbage\r\n\r\n"}, wantErr: true},
		{name: "bad status", frames: []string{"HTTP/1.1 2x0 OK\r\n\r\n"}, wantErr: true},
		{name: "status out of range", frames: []string{"HTTP/1.1 999 Nope\r\n\r\n"}, wantErr: true},
		{name: "bad header", frames: []string{"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n"}, wantErr: true},
		{name: "bad header name", frames: []string{"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n"}, wantErr: true},
		{name: "folded header", frames: []string{"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n"}, wantErr: true},
		{name: "conflicting lengths", frames: []string{"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"}, wantErr: true},
		{name: "negative length", frames: []string{"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"}, wantErr: true},
		{name: "unknown transfer coding", frames: []string{"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"}, wantErr: true},
		{name: "bad chunk size", frames: []string{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"}, wantStatus: 200, wantErr: true},
		{name: "switching protocols", frames: []string{"HTTP/1.1 101 Switching Protocols\r\n\r\n"}, wantErr: true},
		{name: "head too large", frames: []string{"HTTP/1.1 200 OK\r\nX: " + strings.Repeat("a", MaxHeadSize) + "\r\n\r\n"}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			var rr Reader
			rr.reset(rec, tc.head)
			var err error
			for _, f := range tc.frames {
				if err = rr.feed([]byte(f)); err != nil {
					break
				}
			}
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if tc.wantStatus != 0 && rec.Code != tc.wantStatus {
				t.Errorf("status = %d, want %d", rec.Code, tc.wantStatus)
			}
			if got := rec.Body.String(); got != tc.wantBody {
				t.Errorf("body = %q, want %q", got, tc.wantBody)
			}
			if rr.done != tc.wantDone {
				t.Errorf("done = %v, want %v", rr.done, tc.wantDone)
			}
			for k, v := range tc.wantHeader {
				if got := rec.Header().Get(k); got != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
		})
	}
}

// TestResponseReaderBadHeadLeavesHeadersAlone: a reply that fails to parse
// must not leak half its headers into the 502 the client gets.
func TestResponseReaderBadHeadLeavesHeadersAlone(t *testing.T) {
	rec := httptest.NewRecorder()
	var rr Reader
	rr.reset(rec, false)
	if err := rr.feed([]byte("HTTP/1.1 200 OK\r\nX-Leak: 1\r\nbad line\r\n\r\n")); err == nil {
		t.Fatal("want error")
	}
	if len(rec.Header()) != 0 {
		t.Fatalf("headers leaked: %v", rec.Header())
	}
}

// FuzzResponseReader feeds arbitrary reply streams, split at an arbitrary
// point, and checks the reader never panics, never writes an invalid status,
// and never writes more than a declared Content-Length.
func FuzzResponseReader(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"), uint16(3), false)
	f.Add([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), uint16(40), false)
	f.Add([]byte("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"), uint16(0), true)
	f.Add([]byte("HTTP/1.0 302 Found\nLocation: /x\n\n"), uint16(9), false)
	f.Fuzz(func(t *testing.T, stream []byte, split uint16, head bool) {
		rec := httptest.NewRecorder()
		var rr Reader
		rr.reset(rec, head)
		cut := int(split) % (len(stream) + 1)
		for _, part := range [][]byte{stream[:cut], stream[cut:]} {
			if len(part) == 0 {
				continue
			}
			if err := rr.feed(part); err != nil {
				break
			}
		}
		if rr.headDone && (rec.Code < 100 || rec.Code > 599) {
			t.Fatalf("invalid status %d written", rec.Code)
		}
		if int64(rec.Body.Len()) != rr.written {
			t.Fatalf("client got %d bytes, reader counted %d", rec.Body.Len(), rr.written)
		}
		if rec.Body.Len() > len(stream) {
			t.Fatalf("wrote %d bytes from a %d-byte stream", rec.Body.Len(), len(stream))
		}
		// remaining counts down from the declared Content-Length: below
		// zero would mean more body than declared was written.
		if rr.framing == framingLength && rr.remaining < 0 {
			t.Fatalf("wrote past Content-Length by %d bytes", -rr.remaining)
		}
		if rr.done && !rr.headDone {
			t.Fatal("done without a head")
		}
	})
}
