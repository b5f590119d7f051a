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
}

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
	return &socketReader{rcv: rcv, rd: rd}, nil
}

var errRecvTimeout = zmq.Errno(syscall.EAGAIN)

// recv returns the next part as a new slice, waiting up to d for one; on
// timeout the error is EAGAIN, as a blocking receive with ZMQ_RCVTIMEO
// gives.
func (r *socketReader) recv(d time.Duration) ([]byte, error) {
	for {
		msg, err := r.rcv.RecvCopy(zmq.DONTWAIT)
		if !isEAGAIN(err) {
			return msg, err
		}
		if err := r.rd.WaitTimeout(d); err != nil {
			if errors.Is(err, zmqio.ErrTimeout) || errors.Is(err, zmqio.ErrInterrupted) {
				return nil, errRecvTimeout
			}
			return nil, err
		}
	}
}

func (r *socketReader) close() {
	_ = r.rd.Close()
	r.rcv.Close()
}
