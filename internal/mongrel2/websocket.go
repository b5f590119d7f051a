package mongrel2

// Mongrel2's WebSocket messages (src/connection.c, src/handler.c): the
// front end's METHOD for a client's opening handshake, whose body is the
// computed Sec-WebSocket-Accept, and for each client message, whose FLAGS
// header is the first byte of its frame with FIN set.
const (
	MethodWebSocketHandshake = "WEBSOCKET_HANDSHAKE"
	MethodWebSocket          = "WEBSOCKET"
	HeaderFlags              = "FLAGS"
)

// FormatFlags is a FLAGS value as Mongrel2 writes it: "0x%X".
func FormatFlags(flags byte) string {
	const hex = "0123456789ABCDEF"
	if flags < 0x10 {
		return "0x" + hex[flags:flags+1]
	}
	return string([]byte{'0', 'x', hex[flags>>4], hex[flags&0x0F]})
}

// ParseFlags reads a FLAGS value: "0x" and one or two hex digits, as
// Mongrel2 writes it; lower-case digits and "0X" are taken too.
func ParseFlags(s string) (byte, bool) {
	if len(s) < 3 || len(s) > 4 || s[0] != '0' || (s[1] != 'x' && s[1] != 'X') {
		return 0, false
	}
	var b byte
	for i := 2; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		default:
			return 0, false
		}
		b = b<<4 | c
	}
	return b, true
}
