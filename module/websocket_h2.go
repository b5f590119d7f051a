package caddyzmq

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"
)

// WebSockets over HTTP/2 and HTTP/3 (RFC 8441, RFC 9220): the client sends
// a CONNECT with :protocol websocket, and the stream's request and response
// bodies carry the frames. Servers offer it only when asked (Go's HTTP/2
// server with GODEBUG=http2xconnect=1; quic-go's HTTP/3 server always).
// Workers see the HTTP/1.1 upgrade Mongrel2 handlers know, as
// reverse_proxy sends upstream.

// wsConn is the client side of a WebSocket: a hijacked connection, or an
// extended CONNECT stream.
type wsConn interface {
	Write([]byte) (int, error)
	SetWriteDeadline(time.Time) error
	Close() error
}

// isExtendedConnect reports whether r opens a WebSocket with extended
// CONNECT (Go's HTTP/2 server leaves :protocol in the header, quic-go's
// HTTP/3 server puts it in r.Proto).
func isExtendedConnect(r *http.Request) bool {
	if r.Method != http.MethodConnect {
		return false
	}
	switch r.ProtoMajor {
	case 2:
		return strings.EqualFold(r.Header.Get(":protocol"), "websocket")
	case 3:
		return strings.EqualFold(r.Proto, "websocket")
	}
	return false
}

// asUpgrade is the HTTP/1.1 upgrade equivalent of an extended CONNECT, for
// the worker: a GET with Upgrade, Connection and a fresh key.
func asUpgrade(r *http.Request) *http.Request {
	u := r.Clone(r.Context())
	u.Method = http.MethodGet
	u.Header.Del(":protocol")
	u.Header.Set("Upgrade", "websocket")
	u.Header.Set("Connection", "Upgrade")
	var key [16]byte
	_, _ = rand.Read(key[:])
	u.Header.Set("Sec-Websocket-Key", base64.StdEncoding.EncodeToString(key[:]))
	if u.Header.Get("Sec-Websocket-Version") == "" {
		u.Header.Set("Sec-Websocket-Version", "13")
	}
	return u
}

// h2Stream writes frames on the response body of an extended CONNECT.
type h2Stream struct {
	w  http.ResponseWriter
	rc *http.ResponseController
	mu sync.Mutex
}

func (s *h2Stream) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, err := s.w.Write(b)
	if err == nil {
		err = s.rc.Flush()
	}
	return n, err
}

func (s *h2Stream) SetWriteDeadline(t time.Time) error { return s.rc.SetWriteDeadline(t) }

// Close does nothing: the stream ends when the handler returns.
func (s *h2Stream) Close() error { return nil }

var errNot101 = errors.New("the worker's handshake reply is not a 101")

// openExtendedStream answers the CONNECT with 200 and the headers of the
// worker's 101 that still mean something (Sec-WebSocket-Protocol,
// -Extensions), and returns the stream with the reply bytes that followed
// the 101's head.
func openExtendedStream(w http.ResponseWriter, r *http.Request, reply []byte) (wsConn, []byte, error) {
	br := bufio.NewReader(bytes.NewReader(reply))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("reading the worker's 101: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return nil, nil, errNot101
	}
	for k, vs := range resp.Header {
		switch k {
		case "Upgrade", "Connection", "Sec-Websocket-Accept":
			continue
		}
		w.Header()[k] = vs
	}
	rest := reply[len(reply)-br.Buffered():]
	rc := http.NewResponseController(w)
	// Caddy's timeouts were set for HTTP; a quiet socket must not trip
	// them. Full duplex: HTTP/1 needs it, HTTP/2 and 3 have it anyway.
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
	_ = rc.EnableFullDuplex()
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return nil, nil, fmt.Errorf("answering the CONNECT: %w", err)
	}
	return &h2Stream{w: w, rc: rc}, rest, nil
}
