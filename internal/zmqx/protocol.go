package zmqx

import (
	"strconv"
	"time"
)

// Version names the protocol this package speaks; a change that an existing
// peer would misread gets a new version.
const Version = "zmqx/1"

// Trusted request headers: the front end sets them in the request frame's
// headers, and a worker acts on them. Their names are upper case, which no
// client header can be once the front end has lower-cased them.
const (
	// HeaderWindow asks for flow control of the reply: its value is the
	// window in bytes, which the worker may send before it waits for CREDIT.
	HeaderWindow = "ZMQX_WINDOW"
	// HeaderDeadline bounds when the request may start: unix time in
	// milliseconds. A worker that cannot ACK it by then must not run it: the
	// front end re-sends it to another worker.
	HeaderDeadline = "ZMQX_DEADLINE"
	// HeaderBody announces a body that comes over the control channel (BODY
	// messages) instead of inline; BodyStream is its only value.
	HeaderBody = "ZMQX_BODY"
	// BodyStream is the value of HeaderBody for a streamed body.
	BodyStream = "stream"
	// HeaderSession carries the front end's affinity session key (the
	// cookie or header value its affinity names), so that a worker can run
	// all requests of one session on one thread (workerkit.PinnedSessions).
	// Absent when the route has no affinity or the request names no
	// session.
	HeaderSession = "ZMQX_SESSION"
	// HeaderConfirm asks the worker to start a windowed request only once
	// the front end has confirmed its ACK (CONFIRM), and never after a
	// DISCONNECT that answers the ACK instead: its only value is
	// ConfirmAck. The front end sets it on requests with a deadline whose
	// method is not idempotent, which it would otherwise re-send on the
	// deadline if their ACK were lost on its way (a control connection
	// breaking as it leaves), running them twice.
	HeaderConfirm = "ZMQX_CONFIRM"
	// ConfirmAck is the value of HeaderConfirm.
	ConfirmAck = "ack"
	// HeaderBroadcast marks a request that is one of a broadcast (the zmq
	// handler's scatter-gather): the same request sent to every live worker.
	// Its value is the number of workers asked.
	HeaderBroadcast = "ZMQX_BROADCAST"
)

// Timing every peer relies on.
const (
	// HeartbeatInterval is how often a worker sends HB when it has nothing
	// else to send.
	HeartbeatInterval = 250 * time.Millisecond
	// LivenessBound is how long a worker may stay silent on the control
	// channel before the front end declares it lost and fails the requests
	// it acknowledged.
	LivenessBound = time.Second
	// DispatchGrace is how long past a request's deadline (HeaderDeadline)
	// the front end still waits for its ACK before it re-sends it: the ACK's
	// trip back from a worker that started the request just in time.
	DispatchGrace = 250 * time.Millisecond
	// WelcomeWait is how long a worker waits for the front end's answer
	// to its HELLO (WELCOME, or any message) before it takes the front end
	// for one that never answers (it predates WELCOME) and counts the
	// connection up anyway. It must exceed the time a front end takes to
	// close a control connection it does not read (the Caddy module: a
	// LivenessBound, checked every 100 ms), so that a worker never counts
	// such a connection up.
	WelcomeWait = 2 * LivenessBound
)

// ParseWindow reads a HeaderWindow value: a positive number of bytes.
func ParseWindow(v string) (int64, bool) { return parsePositive(v) }

// AppendDeadline appends the HeaderDeadline value for t.
func AppendDeadline(dst []byte, t time.Time) []byte {
	return strconv.AppendInt(dst, t.UnixMilli(), 10)
}

// ParseDeadline reads a HeaderDeadline value: a positive unix time in
// milliseconds.
func ParseDeadline(v string) (unixMilli int64, ok bool) { return parsePositive(v) }

func parsePositive(v string) (int64, bool) {
	n, err := strconv.ParseInt(v, 10, 64)
	return n, err == nil && n > 0
}
