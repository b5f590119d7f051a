// Package wsclient is a minimal RFC 6455 client for tests: it sends the
// upgrade over a connection the caller dialled, masked frames, and reads
// unmasked server frames one by one, so that tests see the exact bytes a
// server sends (close codes, fragmentation) rather than a library's view.
package wsclient

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"

	"github.com/zmqbridge/caddy-zmq/internal/wsframe"
)

// Conn is a client WebSocket.
type Conn struct {
	net.Conn
	br *bufio.Reader
}

// Handshake upgrades c with a GET of path on host. It returns the
// server's response when it is not a 101 with the right accept key.
func Handshake(c net.Conn, host, path string, extra http.Header) (*Conn, *http.Response, error) {
	var nonce [16]byte
	_, _ = rand.Read(nonce[:])
	key := base64.StdEncoding.EncodeToString(nonce[:])
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n", path, host, key)
	for k, vs := range extra {
		for _, v := range vs {
			fmt.Fprintf(&b, "%s: %s\r\n", k, v)
		}
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(c, b.String()); err != nil {
		return nil, nil, err
	}
	br := bufio.NewReaderSize(c, 64<<10)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("reading handshake response: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return nil, resp, fmt.Errorf("handshake answered %s", resp.Status)
	}
	if got := resp.Header.Get("Sec-Websocket-Accept"); got != wsframe.AcceptKey(key) {
		return nil, resp, fmt.Errorf("Sec-WebSocket-Accept %q, want %q", got, wsframe.AcceptKey(key))
	}
	return &Conn{Conn: c, br: br}, resp, nil
}

// Write sends one masked frame; flags is its first byte (0x81 text...).
func (c *Conn) WriteFrame(flags byte, payload []byte) error {
	var key [4]byte
	_, _ = rand.Read(key[:])
	_, err := c.Conn.Write(wsframe.AppendMasked(nil, flags, payload, key))
	return err
}

// WriteText sends a final text frame.
func (c *Conn) WriteText(s string) error { return c.WriteFrame(0x81, []byte(s)) }

// ReadFrame reads one server frame: its first byte and payload.
func (c *Conn) ReadFrame() (byte, []byte, error) { return wsframe.ReadServerFrame(c.br, 0) }

// ReadClose reads frames until a close frame and returns its code; pings
// and data frames before it are skipped.
func (c *Conn) ReadClose() (int, error) {
	for {
		b0, p, err := c.ReadFrame()
		if err != nil {
			return 0, err
		}
		if b0&0x0F == wsframe.OpClose {
			code, _, err := wsframe.ParseClose(p)
			return code, err
		}
	}
}

// Raw reads the bytes that follow the handshake as they come, frames or
// not (to check exactly what a server wrote).
func (c *Conn) Raw() io.Reader { return c.br }
