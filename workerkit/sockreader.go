package workerkit

import (
	"errors"
	"syscall"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/zmqbridge/caddy-zmq/internal/zmqio"
)

// socketReader receives whole frames from a socket that its owner reads
// one part at a time, waiting in Go's network poller between messages
// rather than in a thread blocked inside libzmq (internal/zmqio says why).
type socketReader struct {
	rcv *zmqio.Receiver
	rd  *zmqio.Readiness
	// try receives into msg (or kept) and err; made once
	// (zmqio.Readiness.Await).
	try  func() bool
	msg  []byte
	kept *zmqio.Msg
	err  error
}

// keptPartMin is the size from which a part stays in libzmq's memory
// instead of being copied into a new slice: a large WebSocket message is
// then read from there (WSConn.NextReader); anything else is copied after
// all (server.admitKept), as it would have been.
const keptPartMin = 64 << 10

func newSocketReader(sock *zmq.Socket) (*socketReader, error) {
	rcv, err := zmqio.NewReceiver(sock)
	if err != nil {
		return nil, err
	}
	rd, err := zmqio.NewReadiness(sock)
	if err != nil {
		rcv.Close()
		return nil, err
	}
	r := &socketReader{rcv: rcv, rd: rd}
	r.try = func() bool {
		r.msg, r.kept, r.err = r.rcv.RecvCopyKeep(keptPartMin, zmq.DONTWAIT)
		return !isEAGAIN(r.err)
	}
	return r, nil
}

var errRecvTimeout = zmq.Errno(syscall.EAGAIN)

// recv returns the next part as a new slice, or, from keptPartMin bytes,
// left in libzmq's memory (kept), waiting up to d for one; on timeout the
// error is EAGAIN, as a blocking receive with ZMQ_RCVTIMEO gives.
func (r *socketReader) recv(d time.Duration) ([]byte, *zmqio.Msg, error) {
	if err := r.rd.AwaitTimeout(d, r.try); err != nil {
		if errors.Is(err, zmqio.ErrTimeout) || errors.Is(err, zmqio.ErrInterrupted) {
			return nil, nil, errRecvTimeout
		}
		return nil, nil, err
	}
	msg, kept := r.msg, r.kept
	r.msg, r.kept = nil, nil
	return msg, kept, r.err
}

func (r *socketReader) close() {
	_ = r.rd.Close()
	r.rcv.Close()
}
