// Command wsechohttp is the reverse_proxy side of the WebSocket cases of
// `make bench`: the echo of workerkit/examples/wschat (GET /echo, every
// message back to its sender with its type) served by plain net/http, so
// Caddy's reverse_proxy and `zmq` are compared in front of the same
// behaviour. Frames are read and written with the project's own
// internal/wsframe, the code the zmq module uses towards clients.
//
//	wsechohttp -listen 127.0.0.1:8081
//
// Pings are answered with pongs, a close frame with a close frame. SIGTERM
// ends it (Go's default action).
package main

import (
	"bufio"
	"flag"
	"log"
	"net/http"
	"strings"

	"github.com/zmqbridge/caddy-zmq/internal/wsframe"
)

// maxMessage matches the zmq module's default websocket_max_message.
const maxMessage = 16 << 20

func main() {
	listen := flag.String("listen", "127.0.0.1:8081", "`host:port` to serve on")
	flag.Parse()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /echo", echo)
	log.Fatal(http.ListenAndServe(*listen, mux))
}

func isUpgrade(r *http.Request) bool {
	return strings.EqualFold(r.Header.Get("Upgrade"), "websocket") &&
		strings.Contains(strings.ToLower(r.Header.Get("Connection")), "upgrade") &&
		r.Header.Get("Sec-WebSocket-Key") != ""
}

func echo(w http.ResponseWriter, r *http.Request) {
	if !isUpgrade(r) {
		http.Error(w, "this is a WebSocket endpoint", http.StatusUpgradeRequired)
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer conn.Close()
	_, err = brw.WriteString(wsframe.SwitchingHead + wsframe.AcceptKey(r.Header.Get("Sec-WebSocket-Key")) + "\r\n\r\n")
	if err == nil {
		err = brw.Flush()
	}
	if err != nil {
		return
	}
	serve(bufio.NewWriterSize(conn, 64<<10), wsframe.NewReader(brw.Reader, maxMessage))
}

// serve echoes messages until the client closes or breaks the protocol.
func serve(bw *bufio.Writer, rd *wsframe.Reader) {
	var out []byte
	for {
		m, err := rd.ReadMessage()
		if err != nil {
			if code := wsframe.CloseCode(err); code != 0 { // not for I/O errors
				_, _ = bw.Write(wsframe.AppendClose(nil, code, ""))
				_ = bw.Flush()
			}
			return
		}
		switch m.Opcode() {
		case wsframe.OpPong:
			continue
		case wsframe.OpPing:
			out = wsframe.AppendFrame(out[:0], wsframe.OpPong, m.Payload)
		case wsframe.OpClose:
			_, _ = bw.Write(wsframe.AppendFrame(out[:0], wsframe.OpClose, m.Payload))
			_ = bw.Flush()
			return
		default:
			out = wsframe.AppendHeader(out[:0], m.Flags, len(m.Payload))
		}
		if _, err := bw.Write(out); err != nil {
			return
		}
		if m.Opcode() == wsframe.OpText || m.Opcode() == wsframe.OpBinary {
			if _, err := bw.Write(m.Payload); err != nil {
				return
			}
		}
		if bw.Flush() != nil {
			return
		}
	}
}
