package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"

	"github.com/quic-go/quic-go/http3"

	"github.com/zmqbridge/caddy-zmq/internal/wsframe"
)

// TestWebSocketHTTP3: quic-go's HTTP/3 server (Caddy's) offers extended
// CONNECT (RFC 9220) without any setting; a WebSocket opened that way over
// QUIC reaches the worker as the HTTP/1.1 upgrade it knows, frames flow on
// the stream both ways, and the worker's close ends it.
func TestWebSocketHTTP3(t *testing.T) {
	c, w := startWSChat(t, nil)
	mustDialWS(t, c, true, "/echo", c.proc, w).Close() // the certificate is issued
	client := newHTTP3Client(c.roots)
	defer client.Transport.(*http3.Transport).Close()
	client.Timeout = 0 // the body is a stream: the context bounds the test
	ctx, cancel := context.WithTimeout(context.Background(), 2*requestTimeout)
	defer cancel()
	pr, pw := io.Pipe()
	defer pw.Close()
	req, _ := http.NewRequestWithContext(ctx, http.MethodConnect, c.HTTPSURL("/echo"), pr)
	req.Proto = "websocket" // quic-go's client sends it as :protocol
	req.Header.Set("Sec-WebSocket-Version", "13")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 3 {
		t.Fatalf("extended CONNECT: %s over %s", resp.Status, resp.Proto)
	}
	br := bufio.NewReader(resp.Body)
	key := [4]byte{5, 6, 7, 8}
	for i, n := range []int{5, 300, 70000} { // 7-, 16- and 64-bit lengths
		tok := fmt.Sprintf("over h3 %d %s ", i, newToken("h3"))
		msg := append([]byte(tok), bytes.Repeat([]byte{'x'}, n)...)
		go pw.Write(wsframe.AppendMasked(nil, 0x81, msg, key))
		b0, p, err := wsframe.ReadServerFrame(br, 0)
		if err != nil || b0 != 0x81 || !bytes.Equal(p, msg) {
			t.Fatalf("echo over h3: %#x %d bytes %v, want %d bytes", b0, len(p), err, len(msg))
		}
	}
	go pw.Write(wsframe.AppendMasked(nil, 0x88, []byte{0x03, 0xE8}, key))
	b0, p, err := wsframe.ReadServerFrame(br, 0)
	if err != nil || b0 != 0x88 || !bytes.Equal(p, []byte{0x03, 0xE8}) {
		t.Fatalf("close echo over h3: %#x % x %v", b0, p, err)
	}
}
