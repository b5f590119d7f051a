package conformance

import (
	"bytes"
	"strconv"
)

// Until internal/zmqx lands: the names, in one place, to be replaced by its
// constants.
const (
	verbHello      = "HELLO"
	verbHB         = "HB"
	verbAck        = "ACK"
	verbNack       = "NACK"
	verbUCredit    = "UCREDIT"
	verbBye        = "BYE"
	verbReset      = "RESET"
	verbCredit     = "CREDIT"
	verbDisconnect = "DISCONNECT"
	verbReq        = "REQ"
	verbBody       = "BODY"
	verbBodyEnd    = "BODYEND"
	verbBodyErr    = "BODYERR"
	verbPause      = "PAUSE"
	verbResume     = "RESUME"

	headerWindow   = "ZMQX_WINDOW"
	headerDeadline = "ZMQX_DEADLINE"
	headerBody     = "ZMQX_BODY"
	bodyStream     = "stream"
)

func creditPayload(id string, n int64) []byte {
	return []byte(verbCredit + " " + id + " " + strconv.FormatInt(n, 10))
}

func disconnectPayload(id string) []byte { return []byte(verbDisconnect + " " + id) }

func bodyPayload(id string, data []byte) []byte {
	return append([]byte(verbBody+" "+id+" "), data...)
}

func bodyEndPayload(id string) []byte { return []byte(verbBodyEnd + " " + id) }

func pausePayload() []byte  { return []byte(verbPause) }
func resumePayload() []byte { return []byte(verbResume) }

// parseIDCount parses "<conn_id> <count>" (CREDIT, UCREDIT).
func parseIDCount(args []byte) (string, int64, bool) {
	id, n, ok := bytes.Cut(args, []byte{' '})
	if !ok {
		return "", 0, false
	}
	v, err := strconv.ParseInt(string(n), 10, 64)
	return string(id), v, err == nil && v > 0
}

// parseHello parses HELLO's argument: max_concurrent, the first token.
func parseHello(args []byte) (int, bool) {
	first, _, _ := bytes.Cut(args, []byte{' '})
	n, err := strconv.Atoi(string(first))
	return n, err == nil && n > 0
}
