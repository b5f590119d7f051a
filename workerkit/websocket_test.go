package workerkit

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	zmq "github.com/pebbe/zmq4"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/wsframe"
)

// wsEcho echoes messages; "close" makes it close with 4000; it reports
// how its ReadMessage loop ended on ended.
func wsEcho(room *WSGroup, ended chan<- error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !IsWebSocketUpgrade(r) || r.Method != http.MethodGet || r.Header.Get("Upgrade") != "websocket" {
			http.Error(w, "want a websocket", http.StatusUpgradeRequired)
			return
		}
		c, err := AcceptWebSocket(w, r, http.Header{"Sec-Websocket-Protocol": {"echo"}})
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if room != nil {
			room.Add(c)
		}
		for {
			typ, msg, err := c.ReadMessage()
			if err != nil {
				ended <- err
				return
			}
			switch {
			case string(msg) == "close":
				_ = c.Close(4000, "asked")
			case room != nil:
				_ = room.Broadcast(typ, msg)
			default:
				_ = c.WriteMessage(typ, msg)
			}
		}
	})
}

func wsMsg(flags string, body string) treq {
	return treq{method: "WEBSOCKET", uri: "/ws", body: body,
		headers: []mongrel2.Field{{Name: "FLAGS", Values: []string{flags}}}}
}

func handshake(t *testing.T, f *testFE, conn string) {
	t.Helper()
	accept := wsframe.AcceptKey("dGhlIHNhbXBsZSBub25jZQ==")
	f.request(conn, treq{method: "WEBSOCKET_HANDSHAKE", uri: "/ws", body: accept, headers: []mongrel2.Field{
		{Name: "upgrade", Values: []string{"websocket"}}, {Name: "connection", Values: []string{"Upgrade"}},
		{Name: "sec-websocket-key", Values: []string{"dGhlIHNhbXBsZSBub25jZQ=="}},
		{Name: "sec-websocket-version", Values: []string{"13"}}}})
	got, err := f.next(conn, waitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	want := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + accept +
		"\r\nSec-Websocket-Protocol: echo\r\n\r\n"
	eq(t, "101", string(got), want)
}

func expectReply(t *testing.T, f *testFE, conn string, want []byte) {
	t.Helper()
	got, err := f.next(conn, waitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("conn %s: got % x, want % x", conn, got, want)
	}
}

func TestWebSocketWorker(t *testing.T) {
	ended := make(chan error, 8)
	f := newTestFE(t)
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: wsEcho(nil, ended), MaxConcurrent: 1})
	f.waitWorker()

	handshake(t, f, "1")
	// A second socket opens although MaxConcurrent is 1: an open
	// WebSocket holds no handler slot.
	handshake(t, f, "2")
	f.request("1", wsMsg("0x81", "héllo"))
	expectReply(t, f, "1", wsframe.AppendFrame(nil, wsframe.OpText, []byte("héllo")))
	f.request("2", wsMsg("0x82", "\x00\x01"))
	expectReply(t, f, "2", wsframe.AppendFrame(nil, wsframe.OpBinary, []byte("\x00\x01")))
	// Pings are answered by ReadMessage.
	f.request("1", wsMsg("0x89", "p"))
	expectReply(t, f, "1", wsframe.AppendFrame(nil, wsframe.OpPong, []byte("p")))
	// The client closes: its close is echoed, then the empty reply.
	f.request("1", wsMsg("0x88", "\x03\xe8"))
	expectReply(t, f, "1", wsframe.AppendClose(nil, 1000, ""))
	f.expectClose("1")
	if err := recvWithin(t, ended, "end of conn 1"); !strings.Contains(err.Error(), "1000") {
		t.Fatalf("ReadMessage ended with %v, want a CloseError 1000", err)
	}
	// The handler closes with a code; the client answers; the empty reply.
	f.request("2", wsMsg("0x81", "close"))
	expectReply(t, f, "2", wsframe.AppendClose(nil, 4000, "asked"))
	f.request("2", wsMsg("0x88", "\x0f\xa0"))
	f.expectClose("2")
	recvWithin(t, ended, "end of conn 2")
	// The client goes away: ReadMessage returns and r.Context() ends.
	handshake(t, f, "3")
	f.send(mongrel2.AppendDisconnect(nil, f.sender, "3"))
	if err := recvWithin(t, ended, "end of conn 3"); !strings.Contains(err.Error(), "client went away") {
		t.Fatalf("ReadMessage ended with %v after the disconnect", err)
	}
	// Bad UTF-8 in a text message: 1007.
	handshake(t, f, "4")
	f.request("4", wsMsg("0x81", "\xff"))
	expectReply(t, f, "4", wsframe.AppendClose(nil, 1007, "text message is not UTF-8"))
	// A request that is not a handshake gets the handler's ordinary answer.
	f.request("5", treq{uri: "/ws"})
	if r := f.readReply("5", "GET"); r.resp.StatusCode != http.StatusUpgradeRequired {
		t.Fatalf("plain GET: %d", r.resp.StatusCode)
	}
}

// One broadcast reaches every member in one reply naming up to 128 ids.
func TestWebSocketGroup(t *testing.T) {
	var room WSGroup
	ended := make(chan error, 300)
	f := newTestFE(t)
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: wsEcho(&room, ended), MaxConcurrent: 2})
	f.waitWorker()
	const n = 200
	for i := range n {
		handshake(t, f, strconvI(100+i))
	}
	waitUntil(t, "all members", func() bool { return room.Len() == n })
	f.request("100", wsMsg("0x81", "to all"))
	want := wsframe.AppendFrame(nil, wsframe.OpText, []byte("to all"))
	seen := map[string]bool{}
	frames := 0
	for len(seen) < n {
		ids, body, err := f.recvFrame(waitTimeout)
		if err != nil {
			t.Fatalf("after %d of %d members: %v", len(seen), n, err)
		}
		if !bytes.Equal(body, want) {
			t.Fatalf("broadcast body % x", body)
		}
		if len(ids) > mongrel2.MaxReplyTargets {
			t.Fatalf("a reply names %d connections", len(ids))
		}
		frames++
		for _, id := range ids {
			seen[id] = true
		}
	}
	eq(t, "reply frames for 200 members", frames, 2)
	// A member that goes away leaves the group.
	f.send(mongrel2.AppendDisconnect(nil, f.sender, "100"))
	waitUntil(t, "member left", func() bool { return room.Len() == n-1 })
}

func strconvI(i int) string { return string(mongrel2.AppendUint(nil, uint64(i))) }

// A slow client slows the writer: WriteMessage sends within the reply
// credit and waits for more.
func TestWebSocketFlowControl(t *testing.T) {
	const window = 64 << 10
	blocked := flowHook(t)
	f := newTestFECtl(t)
	msg := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	wrote := make(chan error, 1)
	h := func(w http.ResponseWriter, r *http.Request) {
		c, err := AcceptWebSocket(w, r, nil)
		if err != nil {
			wrote <- err
			return
		}
		wrote <- c.WriteMessage(BinaryMessage, msg)
		_, _, _ = c.ReadMessage() // until the client goes
	}
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: http.HandlerFunc(h)})
	id := f.ctlWait("HELLO", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "HELLO") }).id
	f.request("7", treq{method: "WEBSOCKET_HANDSHAKE", uri: "/ws", body: "acceptkey", window: strconv.Itoa(window)})
	f.ctlWaitBody("ACK 7")
	var got []byte
	read := func(until int) {
		t.Helper()
		for len(got) < until {
			body, err := f.next("7", waitTimeout)
			if err != nil {
				t.Fatalf("after %d bytes: %v", len(got), err)
			}
			got = append(got, body...)
		}
	}
	recvWithin(t, blocked, "the writer to block on credit")
	read(window - minCreditChunk)
	if len(got) > window {
		t.Fatalf("received %d bytes on a window of %d", len(got), window)
	}
	select {
	case err := <-wrote:
		t.Fatalf("WriteMessage returned (%v) with most of the message unsent", err)
	default:
	}
	f.ctlSend(id, "CREDIT 7 "+strconv.Itoa(2<<20))
	if err := recvWithin(t, wrote, "WriteMessage"); err != nil {
		t.Fatal(err)
	}
	head := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: acceptkey\r\n\r\n"
	want := append([]byte(head), wsframe.AppendFrame(nil, BinaryMessage, msg)...)
	read(len(want))
	if !bytes.Equal(got, want) {
		t.Fatalf("stream of %d bytes differs from the %d expected", len(got), len(want))
	}
	f.ctlSend(id, "DISCONNECT 7")
}

// A socket keeps the header blocks it parsed last, with their FLAGS, and
// finds a block only when it is byte for byte one of them.
func TestSeenHeaderBlocks(t *testing.T) {
	c := &WSConn{}
	text, bin, ping := []byte(`{"METHOD":"WEBSOCKET","FLAGS":"0x81"}`), []byte(`{"METHOD":"WEBSOCKET","FLAGS":"0x82"}`), []byte(`{"METHOD":"WEBSOCKET","FLAGS":"0x89"}`)
	big := bytes.Repeat([]byte("x"), wsSeenMax+1)
	type look struct {
		headers []byte
		flags   byte
		found   bool
	}
	for _, step := range []struct {
		remember []byte
		flags    byte
		looks    []look
	}{
		{nil, 0, []look{{text, 0, false}}},
		{text, 0x81, []look{{text, 0x81, true}, {bin, 0, false}, {text[:len(text)-1], 0, false}}},
		{bin, 0x82, []look{{text, 0x81, true}, {bin, 0x82, true}}},
		{ping, 0x89, []look{{ping, 0x89, true}, {bin, 0x82, true}, {text, 0, false}}}, // text's entry went
		{big, 0x81, []look{{big, 0, false}, {ping, 0x89, true}}},                      // too large to keep
	} {
		if step.remember != nil {
			c.remember(step.remember, false, step.flags)
		}
		for _, l := range step.looks {
			if flags, found := c.seenFlags(l.headers, false); flags != l.flags || found != l.found {
				t.Errorf("after remembering %.20q: seenFlags(%.20q) = %#x %v, want %#x %v", step.remember, l.headers, flags, found, l.flags, l.found)
			}
		}
	}
	// The same bytes as a tnetstring dict are another block.
	if _, found := c.seenFlags(ping, true); found {
		t.Error("a JSON block found for the same bytes in a tnetstring dict")
	}
}

// Large messages stay in libzmq's memory (from keptPartMin) once the
// socket has seen their header block: NextReader reads them in place, and
// its reader goes stale at the next NextReader; ReadMessage returns a copy
// that outlives the next read.
func TestWebSocketLargeMessagesInPlace(t *testing.T) {
	stale := make(chan error, 8)
	inPlace := make(chan bool, 8)
	held := make(chan []byte, 8)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := AcceptWebSocket(w, r, http.Header{"Sec-Websocket-Protocol": {"echo"}}) // as handshake expects
		if err != nil {
			return
		}
		var prev io.Reader
		for i := 0; ; i++ {
			if i%2 == 1 {
				// Every other message by ReadMessage, its bytes checked
				// after the next message came in.
				typ, p, err := c.ReadMessage()
				if err != nil {
					return
				}
				held <- p
				_ = c.WriteMessage(typ, p)
				continue
			}
			typ, rd, err := c.NextReader()
			if err != nil {
				return
			}
			if prev != nil {
				_, err := prev.Read(make([]byte, 1))
				stale <- err
				inPlace <- rd.(*wsReader).kept != nil // the block was seen by now
			}
			prev = rd
			var buf bytes.Buffer
			if _, err := io.Copy(&buf, rd); err != nil {
				return
			}
			_ = c.WriteMessage(typ, buf.Bytes())
		}
	})
	f := newTestFE(t)
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: handler})
	f.waitWorker()
	handshake(t, f, "1")
	var sent [][]byte
	for i := range 6 {
		body := bytes.Repeat([]byte{byte('a' + i)}, keptPartMin+i)
		sent = append(sent, body)
		f.request("1", wsMsg("0x82", string(body)))
		expectReply(t, f, "1", wsframe.AppendFrame(nil, wsframe.OpBinary, body))
	}
	for i := 1; i < 6; i += 2 {
		if p := recvWithin(t, held, "a ReadMessage payload"); !bytes.Equal(p, sent[i]) {
			t.Fatalf("message %d from ReadMessage changed after later reads", i)
		}
	}
	for range 2 {
		if err := recvWithin(t, stale, "a stale read"); !errors.Is(err, errStaleReader) {
			t.Fatalf("read of an old NextReader reader: %v, want errStaleReader", err)
		}
		if !recvWithin(t, inPlace, "where a message was read") {
			t.Fatal("a large message of a seen header block was copied, not read in place")
		}
	}
}

// A socket's own frame does not go out directly ahead of a broadcast frame
// still in the reply socket owner's queue: each broadcast frame counts as
// queued for every socket it goes to.
func TestWebSocketOwnFrameAfterBroadcast(t *testing.T) {
	pub, err := zmq.NewSocket(zmq.PUB)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	if err := pub.Bind("inproc://own-after-broadcast"); err != nil {
		t.Fatal(err)
	}
	// A front end whose reply socket is free (a send to no subscriber
	// succeeds) and whose owner does not run: queued frames stay in out.
	fe := &frontEndConn{out: make(chan *frame, 8), dead: make(chan struct{})}
	fe.reply.sock = pub
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rw := getResponseWriter(fe, ctx, testSender, "7", http.MethodGet, 1, 1)
	c := &WSConn{rw: rw, ctx: ctx, wake: make(chan struct{}, 1), done: make(chan struct{})}
	rw.ws, rw.direct = c, true
	var g WSGroup
	g.Add(c)

	if err := c.WriteMessage(TextMessage, []byte("first")); err != nil || len(fe.out) != 0 {
		t.Fatalf("nothing queued: the frame should go out directly (err %v, %d queued)", err, len(fe.out))
	}
	if err := g.Broadcast(TextMessage, []byte("all")); err != nil || len(fe.out) != 1 {
		t.Fatalf("broadcast: err %v, %d queued, want 1", err, len(fe.out))
	}
	if err := c.WriteMessage(TextMessage, []byte("own")); err != nil || len(fe.out) != 2 {
		t.Fatalf("own frame after a queued broadcast: err %v, %d queued, want 2 (behind it)", err, len(fe.out))
	}
	for len(fe.out) > 0 { // the owner sends them
		putFrame(<-fe.out)
	}
	if err := c.WriteMessage(TextMessage, []byte("later")); err != nil || len(fe.out) != 0 {
		t.Fatalf("queue empty again: err %v, %d queued, want the frame sent directly", err, len(fe.out))
	}
}
