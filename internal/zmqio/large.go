package zmqio

import zmq "github.com/pebbe/zmq4"

// largePart is the size from which a part that libzmq allocates and frees
// counts toward the next trim (noteFreed): parts this big are single
// messages, not frames that the next frames reuse, and a burst of them
// (many WebSocket clients sending large messages at once) would otherwise
// stay in libzmq's heap once freed (see mmapThreshold).
const largePart = 1 << 20

// noteLarge counts a part of n bytes that libzmq frees (a copy it made
// for a send, or a received part once copied out) if it is a large one.
func noteLarge(n int) {
	if n >= largePart {
		noteFreed(n)
	}
}

// SendBytes is sock.SendBytes for parts that may be large: libzmq copies b
// into its own heap and frees it once sent, and a large part counts toward
// the next trim (noteLarge). Only sock's owner may call it.
func SendBytes(sock *zmq.Socket, b []byte, flags zmq.Flag) (int, error) {
	n, err := sock.SendBytes(b, flags)
	if err == nil {
		noteLarge(len(b))
	}
	return n, err
}
