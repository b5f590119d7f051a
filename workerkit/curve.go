package workerkit

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/zmqbridge/caddy-zmq/internal/zcert"
)

// CURVE (CurveZMQ) encrypts and authenticates every socket between a worker
// and a front end that has `curve` on: the front end is the CURVE server,
// the worker a client that must know the server's public key
// (FrontEnd.ServerKey) and present a keypair of its own that the front end
// allows (FrontEnd.PublicKey, FrontEnd.SecretKey). A worker never takes work
// over a connection whose handshake failed: libzmq passes no message on it.

// curveHandshakeIvl bounds a CURVE handshake, so that a worker the front
// end refused (it answers "not yet": the allow-list may change by reload)
// dials again soon, and gets in at the first try after its key is allowed.
const curveHandshakeIvl = 5 * time.Second

// curveOn reports whether f uses CURVE.
func (f FrontEnd) curveOn() bool { return f.ServerKey != "" || f.SecretKey != "" || f.PublicKey != "" }

// validateCurve checks the keys: the server key and the worker's secret key
// are required together; the public key is derived when empty, checked
// against the secret one when given.
func (f *FrontEnd) validateCurve() error {
	if !f.curveOn() {
		return nil
	}
	if f.ServerKey == "" || f.SecretKey == "" {
		return errors.New("workerkit: CURVE needs both FrontEnd.ServerKey (the front end's public key) and FrontEnd.SecretKey (the worker's)")
	}
	if err := zcert.CheckKey(f.ServerKey); err != nil {
		return fmt.Errorf("workerkit: FrontEnd.ServerKey: %w", err)
	}
	pub, err := zcert.PublicOf(f.SecretKey)
	if err != nil {
		return fmt.Errorf("workerkit: FrontEnd.SecretKey: %w", err)
	}
	if f.PublicKey != "" && f.PublicKey != pub {
		return errors.New("workerkit: FrontEnd.PublicKey does not belong to FrontEnd.SecretKey")
	}
	f.PublicKey = pub
	return nil
}

// publicKey is PublicKey, or the one SecretKey gives (validated before).
func (f FrontEnd) publicKey() string {
	if f.PublicKey != "" {
		return f.PublicKey
	}
	pub, _ := zcert.PublicOf(f.SecretKey)
	return pub
}

// secure makes sock a CURVE client of the front end (before it connects
// or binds). A front end without CURVE leaves sock as it is.
func (fe *frontEndConn) secure(sock *zmq.Socket) error {
	f := fe.cfg
	if !f.curveOn() {
		return nil
	}
	return firstErr(
		sock.SetCurveServerkey(f.ServerKey),
		sock.SetCurvePublickey(f.publicKey()),
		sock.SetCurveSecretkey(f.SecretKey),
		sock.SetHandshakeIvl(curveHandshakeIvl),
	)
}

// watchCurve logs, once until a handshake succeeds again, why CURVE
// handshakes with the front end fail; libzmq keeps dialling meanwhile.
// The returned stop waits for the watcher; call it before closing sock.
func (fe *frontEndConn) watchCurve(sock *zmq.Socket) (stop func(), err error) {
	if !fe.cfg.curveOn() {
		return func() {}, nil
	}
	ep := fmt.Sprintf("inproc://workerkit-curve-monitor-%d", ctlSeq.Add(1))
	if err := sock.Monitor(ep, zmq.EVENT_HANDSHAKE_SUCCEEDED|zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL|
		zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL|zmq.EVENT_HANDSHAKE_FAILED_AUTH); err != nil {
		return nil, err
	}
	mon, err := fe.s.zctx.NewSocket(zmq.PAIR)
	if err == nil {
		err = firstErr(mon.SetLinger(0), mon.SetRcvtimeo(recvTimeout), mon.Connect(ep))
	}
	if err != nil {
		if mon != nil {
			_ = mon.Close()
		}
		return nil, err
	}
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		defer mon.Close()
		failing := false
		for {
			ev, _, value, err := mon.RecvEvent(0)
			if err != nil {
				select {
				case <-quit:
					return
				default:
					continue
				}
			}
			if ev == zmq.EVENT_HANDSHAKE_SUCCEEDED {
				if failing {
					fe.log.Info("CURVE handshake with the front end succeeded", "public_key", fe.cfg.publicKey())
				}
				failing = false
				continue
			}
			if failing {
				continue
			}
			failing = true
			fe.log.Error(curveFailure(ev, value)+"; retrying",
				"replies", fe.cfg.Replies, "public_key", fe.cfg.publicKey(), "server_key", fe.cfg.ServerKey)
		}
	}()
	return func() { close(quit); <-done }, nil
}

// curveFailure says why a handshake failed, as far as the client can tell:
// a server that refuses a key and one that cannot decrypt a HELLO meant for
// another key both just hang up.
func curveFailure(ev zmq.Event, value int) string {
	switch {
	case ev == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
		return fmt.Sprintf("the front end refused this worker's CURVE key (ZAP status %d): ask its operator to allow public_key", value)
	case ev == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL && value == 0x11000002:
		return "the front end does not speak CURVE (plaintext) but this worker was given a server key"
	default:
		return "CURVE handshake with the front end failed: either this worker's public_key is not on its allow-list " +
			"(yet), or server_key is not the front end's key (compare with 'caddy zmq frontend-key' on the front end)"
	}
}

// CurveFlags are the command-line flags of a worker that speaks CURVE to
// its front ends: -curve-server-key (the front end's public key, or a .key
// file holding it) and -curve-key (the worker's zcert secret key file, as
// `caddy zmq keygen` writes it).
//
//	var curve workerkit.CurveFlags
//	curve.Register(flag.CommandLine)
//	flag.Parse()
//	if err := curve.Apply(frontEnds); err != nil { ... }
type CurveFlags struct {
	ServerKey string
	KeyFile   string
}

// Register adds the flags to fs.
func (c *CurveFlags) Register(fs *flag.FlagSet) {
	fs.StringVar(&c.ServerKey, "curve-server-key", "",
		"the front end's CURVE public `KEY` (Z85, 'caddy zmq frontend-key' prints it) or a .key file holding it; turns CURVE on")
	fs.StringVar(&c.KeyFile, "curve-key", "",
		"this worker's CURVE secret key `FILE` (zcert format, e.g. from 'caddy zmq keygen --out DIR/NAME': NAME.key_secret)")
}

// Apply sets the keys on every front end (all of them, as one worker speaks
// one way); without -curve-server-key it does nothing.
func (c *CurveFlags) Apply(fes []FrontEnd) error {
	if c.ServerKey == "" && c.KeyFile == "" {
		return nil
	}
	if c.ServerKey == "" || c.KeyFile == "" {
		return errors.New("workerkit: -curve-server-key and -curve-key go together")
	}
	server := c.ServerKey
	if zcert.CheckKey(server) != nil { // not a key: a file holding it
		cert, err := readCert(server)
		if err != nil {
			return fmt.Errorf("workerkit: -curve-server-key: %w", err)
		}
		server = cert.Public
	}
	cert, err := readCert(c.KeyFile)
	if err != nil {
		return fmt.Errorf("workerkit: -curve-key: %w", err)
	}
	if cert.Secret == "" {
		return fmt.Errorf("workerkit: -curve-key %s has no secret-key (use the .key_secret file)", c.KeyFile)
	}
	for i := range fes {
		fes[i].ServerKey, fes[i].PublicKey, fes[i].SecretKey = server, cert.Public, cert.Secret
	}
	return nil
}

func readCert(path string) (zcert.Cert, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return zcert.Cert{}, err
	}
	cert, err := zcert.Parse(data)
	if err != nil {
		return cert, fmt.Errorf("%s: %w", path, err)
	}
	return cert, nil
}
