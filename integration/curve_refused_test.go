package integration

import (
	"fmt"
	"testing"

	zmq "github.com/pebbe/zmq4"
)

// TestCurveRefusedPeerNotPlain: a peer whose CURVE key is not allowed (an
// attacker's PULL socket with a key of its own on the request endpoint; a
// workerkit worker does not dial requests before it is subscribed to)
// keeps its request connection open, silent, until libzmq's handshake
// timeout (ZAP 300), then dials again. That connection is counted among
// the request socket's connections, but it is no plain handler:
// plain_connections (the count coversPeers uses to keep dispatch deadlines
// on) stays 0 beside an allowed control-channel worker, so an
// unauthenticated peer cannot turn safe re-sends off.
func TestCurveRefusedPeerNotPlain(t *testing.T) {
	c, serverKey, good := startCurveCaddyAllowing(t, "good")
	startCurveWorker(t, "good", c.FrontEndControl(), serverKey, good.secretFile).
		MustWaitFor("SERVING", startTimeout)
	err := poll(startTimeout, nil, func() error {
		if p := curvePool(t, c); len(p.Workers) != 1 || p.PlainConnections != 0 {
			return fmt.Errorf("pool %+v, want the good worker alone", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	strangerPub, strangerSecret, err := zmq.NewCurveKeypair()
	if err != nil {
		t.Fatal(err)
	}
	refusedPeer(t, c.Endpoint("ZMQ_REQUESTS"), serverKey, strangerPub, strangerSecret)
	c.proc.MustWaitFor(strangerPub, startTimeout) // refused, logged
	// The refused connection open beside the good one, and not plain.
	err = poll(startTimeout, nil, func() error {
		p := curvePool(t, c)
		if p.Connections < 2 || len(p.Workers) != 1 || p.PlainConnections != 0 {
			return fmt.Errorf("pool: %d connections, %d plain, %d workers; want the refused one listed and not plain",
				p.Connections, p.PlainConnections, len(p.Workers))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// curvePool is curve.Caddyfile's only pool in /zmq/pools.
func curvePool(t *testing.T, c *caddy) obsPool {
	t.Helper()
	pools := adminPools(t, c)
	if len(pools) != 1 {
		t.Fatalf("%d pools in /zmq/pools, want 1", len(pools))
	}
	return pools[0]
}

// refusedPeer connects a CURVE PULL socket with key pub/secret to
// endpoint, closed when the test ends.
func refusedPeer(t *testing.T, endpoint, serverKey, pub, secret string) {
	t.Helper()
	zctx, err := zmq.NewContext()
	if err != nil {
		t.Fatal(err)
	}
	sock, err := zctx.NewSocket(zmq.PULL)
	if err != nil {
		zctx.Term()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sock.Close()
		zctx.Term()
	})
	for _, err := range []error{sock.SetLinger(0), sock.SetCurveServerkey(serverKey),
		sock.SetCurvePublickey(pub), sock.SetCurveSecretkey(secret), sock.Connect(endpoint)} {
		if err != nil {
			t.Fatal(err)
		}
	}
}
