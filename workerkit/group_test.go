package workerkit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
)

// sseHandler joins g the way a server-sent events endpoint does; other
// paths answer normally. Join errors are answered 503 and reported.
func sseHandler(g *Group, joinErr chan<- error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/events" {
			_, _ = io.WriteString(w, "plain")
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		_, _ = io.WriteString(w, ": joined\n\n")
		err := g.Join(w, r)
		if joinErr != nil {
			joinErr <- err
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
		}
	})
}

type rframe struct {
	ids  []string
	body []byte
}

// frames reads exactly n reply frames.
func (f *testFE) frames(n int) []rframe {
	f.t.Helper()
	out := make([]rframe, 0, n)
	for len(out) < n {
		ids, body, err := f.recvFrame(waitTimeout)
		if err != nil {
			f.t.Fatalf("after %d of %d frames: %v", len(out), n, err)
		}
		out = append(out, rframe{ids, body})
	}
	return out
}

// streams accumulates, per connection, the bytes of every frame naming it.
type streams map[string][]byte

func (s streams) add(frs []rframe) {
	for _, fr := range frs {
		for _, id := range fr.ids {
			if _, ok := s[id]; ok {
				s[id] = append(s[id], fr.body...)
			}
		}
	}
}

// checkFanOut checks that frames carry body to exactly the connections
// want, each once, with at most 128 per frame.
func checkFanOut(t *testing.T, what string, frs []rframe, want []string, body func(raw bool) []byte, raw map[string]bool) {
	t.Helper()
	seen := map[string]int{}
	for _, fr := range frs {
		if len(fr.ids) > mongrel2.MaxReplyTargets {
			t.Errorf("%s: frame names %d connections", what, len(fr.ids))
		}
		isRaw := raw[fr.ids[0]]
		for _, id := range fr.ids {
			seen[id]++
			if raw[id] != isRaw {
				t.Errorf("%s: frame mixes chunked and HTTP/1.0 members", what)
			}
		}
		if !bytes.Equal(fr.body, body(isRaw)) {
			t.Errorf("%s: frame body %q, want %q", what, printable(fr.body, 60), printable(body(isRaw), 60))
		}
	}
	var got []string
	for id, n := range seen {
		if n != 1 {
			t.Errorf("%s: %s reached %d times", what, id, n)
		}
		got = append(got, id)
	}
	sort.Strings(got)
	w := slices.Clone(want)
	sort.Strings(w)
	if !slices.Equal(got, w) {
		t.Errorf("%s: reached %d connections, want %d", what, len(got), len(w))
	}
}

func chunk(p string) []byte { return fmt.Appendf(nil, "%x\r\n%s\r\n", len(p), p) }

// Hundreds of members on two front ends, some of them HTTP/1.0, with four
// handler slots: one frame per 128 members, members leave on disconnect,
// broadcasts ignore credit windows, Close ends every response.
func TestGroupFanOut(t *testing.T) {
	var g Group
	fa, fb := newTestFECtl(t), newTestFE(t)
	startWorker(t, &Worker{FrontEnds: []FrontEnd{fa.fe, fb.fe}, Handler: sseHandler(&g, nil), MaxConcurrent: 4})
	id := fa.ctlWait("HELLO", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "HELLO") }).id

	const nChunked, nRaw, nB = 290, 10, 150
	var aConns, bConns []string
	raw := map[string]bool{}
	for i := range nChunked + nRaw {
		conn := strconv.Itoa(1000 + i)
		q := treq{uri: "/events", window: "4096"} // a small window: broadcasts must ignore it
		if i >= nChunked {
			q.version = "HTTP/1.0"
			raw[conn] = true
		}
		fa.request(conn, q)
		aConns = append(aConns, conn)
	}
	for i := range nB {
		conn := strconv.Itoa(5000 + i)
		fb.request(conn, treq{uri: "/events"})
		bConns = append(bConns, conn)
	}
	// Full streams of a few members, checked at the end.
	sa := streams{aConns[0]: nil, aConns[nChunked-1]: nil, aConns[nChunked]: nil}
	sb := streams{bConns[0]: nil}

	heads := fa.frames(len(aConns))
	sa.add(heads)
	for _, h := range heads {
		if len(h.ids) != 1 {
			t.Fatalf("head frame names %v", h.ids)
		}
		s := string(h.body)
		if !strings.HasPrefix(s, "HTTP/1.1 200 OK\r\n") || !strings.Contains(s, "\r\nContent-Type: text/event-stream\r\n") {
			t.Fatalf("head %q", s)
		}
		if raw[h.ids[0]] {
			if !strings.Contains(s, "\r\nConnection: close\r\n") || !strings.HasSuffix(s, "\r\n\r\n: joined\n\n") {
				t.Fatalf("HTTP/1.0 head %q", s)
			}
		} else if !strings.Contains(s, "\r\nTransfer-Encoding: chunked\r\n") || !strings.HasSuffix(s, "\r\n\r\n"+string(chunk(": joined\n\n"))) {
			t.Fatalf("head %q", s)
		}
	}
	sb.add(fb.frames(len(bConns)))
	waitUntil(t, "every member to join", func() bool { return g.Len() == len(aConns)+len(bConns) })

	// Handler slots are free: an ordinary request is served at once.
	fa.request("1", treq{uri: "/plain"})
	eq(t, "plain", string(fa.readReply("1", "GET").body), "plain")

	msg := "data: hello\n\n"
	body := func(isRaw bool) []byte {
		if isRaw {
			return []byte(msg)
		}
		return chunk(msg)
	}
	must(t, g.Broadcast([]byte(msg)))
	frs := fa.frames(3 + 1) // 290 chunked: 128+128+34; 10 raw: one frame
	sa.add(frs)
	checkFanOut(t, "broadcast on a", frs, aConns, body, raw)
	frs = fb.frames(2) // 128+22
	sb.add(frs)
	checkFanOut(t, "broadcast on b", frs, bConns, body, raw)

	// Larger than a frame's body, and far beyond the members' windows.
	big := strings.Repeat("x", maxMsgBody+1000)
	must(t, g.Broadcast([]byte(big)))
	frs = fa.frames(2 * (3 + 1))
	sa.add(frs)
	for _, fr := range frs {
		if len(fr.body) > maxMsgBody+16 {
			t.Errorf("frame with %d body bytes", len(fr.body))
		}
	}
	sb.add(fb.frames(2 * 2))

	// Members leave on the Mongrel2 notice and on control DISCONNECT.
	var gone []string
	for _, c := range aConns[:5] {
		fa.send(mongrel2.AppendDisconnect(nil, fa.sender, c))
		gone = append(gone, c)
	}
	fa.ctlWaitAck(aConns[len(aConns)-1]) // the members were ACKed (windowed)
	for _, c := range aConns[5:10] {
		fa.ctlSend(id, "DISCONNECT "+c)
		gone = append(gone, c)
	}
	fb.send(mongrel2.AppendDisconnect(nil, fb.sender, bConns[1]))
	waitUntil(t, "disconnected members to leave", func() bool { return g.Len() == len(aConns)+len(bConns)-11 })
	aLeft, bLeft := aConns[10:], slices.Delete(slices.Clone(bConns), 1, 2)

	msg = "data: after\n\n"
	must(t, g.Broadcast([]byte(msg)))
	frs = fa.frames(3 + 1) // 280 chunked: 128+128+24; 10 raw
	sa.add(frs)
	checkFanOut(t, "broadcast after leaves on a", frs, aLeft, body, raw)
	frs = fb.frames(2)
	sb.add(frs)
	checkFanOut(t, "broadcast after leaves on b", frs, bLeft, body, raw)

	// Close: the last chunk (or, for HTTP/1.0, closing the connection).
	g.Close()
	eq(t, "Len after Close", g.Len(), 0)
	frs = fa.frames(3 + 1)
	sa.add(frs)
	checkFanOut(t, "end on a", frs, aLeft, func(isRaw bool) []byte {
		if isRaw {
			return []byte{}
		}
		return []byte("0\r\n\r\n")
	}, raw)
	frs = fb.frames(2)
	sb.add(frs)
	if !errors.Is(g.Broadcast([]byte("late")), ErrGroupClosed) {
		t.Error("Broadcast after Close did not fail")
	}
	// Joining a closed group fails; the response stays with the handler,
	// which completes it (the status was already sent with ": joined").
	fa.request("2", treq{uri: "/events"})
	r := fa.readReply("2", "GET")
	if r.bodyErr != nil || !strings.HasPrefix(string(r.body), ": joined\n\n") || !strings.Contains(string(r.body), ErrGroupClosed.Error()) {
		t.Errorf("after Close: %d %q (%v)", r.resp.StatusCode, r.body, r.bodyErr)
	}

	// Complete, well-formed streams.
	wantBody := ": joined\n\n" + "data: hello\n\n" + big + "data: after\n\n"
	for conn, b := range map[string][]byte{aConns[nChunked-1]: sa[aConns[nChunked-1]], aConns[nChunked]: sa[aConns[nChunked]], bConns[0]: sb[bConns[0]]} {
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(b)), nil)
		if err != nil {
			t.Fatalf("%s: %v", conn, err)
		}
		got, err := io.ReadAll(resp.Body)
		if err != nil || string(got) != wantBody {
			t.Errorf("%s: body %q (%v), want %q", conn, printable(got, 80), err, printable([]byte(wantBody), 80))
		}
	}
	if b := sa[aConns[0]]; !bytes.Contains(b, []byte("data: hello")) || bytes.Contains(b, []byte("data: after")) || bytes.HasSuffix(b, []byte("0\r\n\r\n")) {
		t.Errorf("a member that left got %q", printable(b, 300))
	}
}

// Members are ended when the worker shuts down, and dropped without a word
// when their front end goes away.
func TestGroupEnds(t *testing.T) {
	t.Run("worker shutdown", func(t *testing.T) {
		var g Group
		f := newTestFE(t)
		w := startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: sseHandler(&g, nil)})
		f.request("1", treq{uri: "/events"})
		f.request("2", treq{uri: "/events", version: "HTTP/1.0"})
		f.frames(2)
		waitUntil(t, "members to join", func() bool { return g.Len() == 2 })
		must(t, w.stop())
		frs := f.frames(2)
		got := map[string]string{}
		for _, fr := range frs {
			got[strings.Join(fr.ids, " ")] = string(fr.body)
		}
		eq(t, "chunked end", got["1"], "0\r\n\r\n")
		eq(t, "HTTP/1.0 end (close)", got["2"], "")
		eq(t, "Len", g.Len(), 0)
	})
	t.Run("front end gone", func(t *testing.T) {
		var g Group
		f := newTestFE(t)
		startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: sseHandler(&g, nil)})
		f.request("1", treq{uri: "/events"})
		f.frames(1)
		waitUntil(t, "the member to join", func() bool { return g.Len() == 1 })
		f.closeSub()
		waitUntil(t, "the member to be dropped", func() bool { return g.Len() == 0 })
		f.rebindSub()
	})
}

// unwrapper is middleware that wraps the ResponseWriter the standard way.
type unwrapper struct{ http.ResponseWriter }

func (u unwrapper) Unwrap() http.ResponseWriter { return u.ResponseWriter }

func TestJoinErrors(t *testing.T) {
	f := newTestFE(t)
	var closed Group
	closed.Close()
	type outcome struct{ join, again, write error }
	results := make(chan outcome, 1)
	h := func(w http.ResponseWriter, r *http.Request) {
		var g Group
		defer g.Close()
		var o outcome
		switch r.URL.Path {
		case "/ok":
			o.join = g.Join(w, r)
		case "/wrapped":
			o.join = g.Join(unwrapper{w}, r)
		case "/no-content":
			w.WriteHeader(http.StatusNoContent)
			o.join = g.Join(w, r)
		case "/length":
			w.Header().Set("Content-Length", "10")
			o.join = g.Join(w, r)
		case "/closed":
			o.join = closed.Join(w, r)
		case "/gone":
			<-r.Context().Done()
			o.join = g.Join(w, r)
		default:
			o.join = g.Join(w, r)
		}
		if o.join == nil {
			o.again = g.Join(w, r)
			_, o.write = io.WriteString(w, "after join")
		}
		results <- o
	}
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: http.HandlerFunc(h)})

	joinedErr := func(err error) bool { return errors.Is(err, errJoined) }
	tests := []struct {
		name, method, path string
		join               func(error) bool
		status             int // of the response the handler kept; 0: joined, then ended by Close
		disconnect         bool
	}{
		{name: "joins", path: "/ok", join: isNil},
		{name: "through an Unwrap middleware", path: "/wrapped", join: isNil},
		{name: "HEAD", method: "HEAD", path: "/ok", join: is(http.ErrBodyNotAllowed), status: 200},
		{name: "204", path: "/no-content", join: is(http.ErrBodyNotAllowed), status: 204},
		{name: "Content-Length", path: "/length", join: is(errJoinLength), status: 200},
		{name: "closed group", path: "/closed", join: is(ErrGroupClosed), status: 200},
		{name: "client gone", path: "/gone", join: is(errClientGone), disconnect: true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := strconv.Itoa(i + 1)
			method := tt.method
			if method == "" {
				method = "GET"
			}
			f.request(conn, treq{method: method, uri: tt.path})
			if tt.disconnect {
				f.send(mongrel2.AppendDisconnect(nil, f.sender, conn))
			}
			o := recvWithin(t, results, "handler")
			if !tt.join(o.join) {
				t.Fatalf("Join: %v", o.join)
			}
			if o.join == nil {
				if !joinedErr(o.again) || !joinedErr(o.write) {
					t.Errorf("after Join: Join again %v, Write %v; want errJoined", o.again, o.write)
				}
				// The deferred Close ended it: head, then the last chunk.
				r := f.readReply(conn, method)
				eq(t, "status", r.resp.StatusCode, 200)
				eq(t, "body", string(r.body), "")
				eq(t, "chunked", len(r.resp.TransferEncoding), 1)
			} else if tt.status != 0 {
				r := f.readReply(conn, method)
				eq(t, "status", r.resp.StatusCode, tt.status)
			}
		})
	}
	t.Run("not a workerkit ResponseWriter", func(t *testing.T) {
		var g Group
		err := g.Join(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil))
		if !errors.Is(err, http.ErrNotSupported) {
			t.Errorf("Join: %v", err)
		}
	})
}

func isNil(err error) bool { return err == nil }

func is(target error) func(error) bool { return func(err error) bool { return errors.Is(err, target) } }
