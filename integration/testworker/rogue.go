package main

import (
	"bytes"
	"fmt"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/zmqbridge/caddy-zmq/workerkit"
)

// sendRogueFrame plays a rogue worker beside the real one (-rogue-frame):
// an XPUB of its own, with the worker's CURVE keys, connected to the front
// end's reply endpoint, sends one frame of n bytes under the subscription
// it sees (so that the front end cannot filter it out), then stays
// connected. The worker itself keeps serving, on the control channel too.
func sendRogueFrame(fe workerkit.FrontEnd, n int) error {
	pub, err := zmq.NewSocket(zmq.XPUB)
	if err != nil {
		return err
	}
	// Never closed: the process ends with it.
	if fe.ServerKey != "" {
		err = firstErr(pub.SetCurveServerkey(fe.ServerKey), pub.SetCurvePublickey(fe.PublicKey), pub.SetCurveSecretkey(fe.SecretKey))
	}
	if err == nil {
		err = firstErr(pub.SetSndtimeo(time.Minute), pub.Connect(fe.Replies))
	}
	if err != nil {
		return err
	}
	sub, err := pub.RecvBytes(0) // "\x01" + the topic
	if err != nil {
		return err
	}
	if len(sub) == 0 || sub[0] != 1 {
		return fmt.Errorf("unexpected subscription frame %q", sub)
	}
	// First a small reply for no request (the front end drops it), as a
	// worker's reply connection carries before it goes wrong.
	if _, err := pub.SendBytes(append(bytes.Clone(sub[1:]), "1:0, x"...), 0); err != nil {
		return err
	}
	frame := append(bytes.Clone(sub[1:]), bytes.Repeat([]byte{'x'}, n)...)
	if _, err := pub.SendBytes(frame, 0); err != nil {
		return err
	}
	say("ROGUE FRAME SENT %d", len(frame))
	return nil
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
