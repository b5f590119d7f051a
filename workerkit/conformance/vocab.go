package conformance

import (
	"strconv"
	"strings"

	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

// The zmqx/1 vocabulary comes from internal/zmqx, the one package that
// spells it; these helpers adapt it to the kit's string connection ids.

func connNum(id string) uint64 {
	n, _ := strconv.ParseUint(id, 10, 64)
	return n
}

func creditPayload(id string, n int64) []byte { return zmqx.AppendCredit(nil, connNum(id), n) }

func disconnectPayload(id string) []byte { return zmqx.AppendDisconnect(nil, connNum(id)) }

func bodyPayload(id string, data []byte) []byte { return zmqx.AppendBody(nil, connNum(id), data) }

func bodyEndPayload(id string) []byte { return zmqx.AppendBodyEnd(nil, connNum(id)) }

// unknownVerb and unknownHeader stand for what a later version may add: a
// verb zmqx/1 does not know, and a trusted header with zmqx's prefix that it
// does not define.
var (
	unknownVerb   = "ZMQXFUTUREVERB"
	unknownHeader = headerPrefix() + "FUTURE_EXTENSION"
)

// headerPrefix is what every trusted header name starts with.
func headerPrefix() string {
	i := strings.IndexByte(zmqx.HeaderWindow, '_')
	return zmqx.HeaderWindow[:i+1]
}
