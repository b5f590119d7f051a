package caddyzmq

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	zmq "github.com/pebbe/zmq4"
	"go.uber.org/zap"

	"github.com/zmqbridge/caddy-zmq/internal/zcert"
	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

// Curve turns on CurveZMQ on every socket of the bridge (request, reply and
// control), whichever side binds: Caddy is the CURVE server, workers are
// clients that must know its public key and present a key of their own
// that is on the allow-list. Traffic is encrypted and authenticated;
// plaintext peers and unknown keys are refused at the handshake.
type Curve struct {
	// SecretKey is the front end's CURVE secret key (40 characters of
	// Z85); its public key is derived from it. Default: a keypair
	// generated on first use and kept in Caddy's storage
	// (zmq/curve/frontend.key_secret), so front ends that share a storage
	// share one key. `caddy zmq frontend-key` prints its public key.
	SecretKey string `json:"secret_key,omitempty"`

	// SecretKeyFile is a zcert secret key file (CZMQ and pyzmq format,
	// e.g. made by `caddy zmq keygen`) holding the front end's keypair,
	// instead of SecretKey. Default: none.
	SecretKeyFile string `json:"secret_key_file,omitempty"`

	// Allow lists the public keys (Z85) of the workers allowed to connect.
	// A reload that changes the list applies to new connections at once,
	// without dropping the workers that stay or their requests. Default:
	// none.
	Allow []string `json:"allow,omitempty"`

	// AllowDir is a directory of zcert public key files (*.key, as CZMQ
	// and pyzmq write them): each one's public-key is allowed, as if
	// listed in Allow. It is read at provisioning, so adding a file takes
	// a reload. Default: none.
	AllowDir string `json:"allow_dir,omitempty"`
}

// UnmarshalCaddyfile parses the curve block:
//
//	curve {
//	    secret_key      <z85>     # or secret_key_file; default: generated, in Caddy's storage
//	    secret_key_file <path>
//	    allow           <z85>...  # repeatable
//	    allow_dir       <dir>     # every *.key file in it
//	}
func (c *Curve) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.Errf("curve takes a block, not arguments")
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		args := d.RemainingArgs()
		if len(args) == 0 {
			return d.ArgErr()
		}
		switch opt {
		case "allow":
			c.Allow = append(c.Allow, args...)
			continue
		case "secret_key":
			c.SecretKey = args[0]
		case "secret_key_file":
			c.SecretKeyFile = args[0]
		case "allow_dir":
			c.AllowDir = args[0]
		default:
			return d.Errf("unknown curve option %q", opt)
		}
		if len(args) > 1 {
			return d.Errf("%s takes one argument", opt)
		}
	}
	return nil
}

func (c *Curve) validate() error {
	if c.SecretKey != "" && c.SecretKeyFile != "" {
		return fmt.Errorf("zmq: curve: set secret_key or secret_key_file, not both")
	}
	if c.SecretKey != "" {
		if err := zcert.CheckKey(c.SecretKey); err != nil {
			return fmt.Errorf("zmq: curve: secret_key: %w", err)
		}
	}
	for _, k := range c.Allow {
		if err := zcert.CheckKey(k); err != nil {
			return fmt.Errorf("zmq: curve: allow %q: %w", k, err)
		}
	}
	return nil
}

// frontEndKey resolves the front end's keypair: explicit, from a file, or
// from Caddy's storage (generated there the first time).
func (c *Curve) frontEndKey(ctx caddy.Context, logger *zap.Logger) (keyPair, error) {
	switch {
	case c.SecretKey != "":
		pub, err := zcert.PublicOf(c.SecretKey)
		return keyPair{public: pub, secret: c.SecretKey}, err
	case c.SecretKeyFile != "":
		data, err := os.ReadFile(c.SecretKeyFile)
		if err != nil {
			return keyPair{}, fmt.Errorf("curve secret_key_file: %w", err)
		}
		zc, err := zcert.Parse(data)
		if err == nil && zc.Secret == "" {
			err = fmt.Errorf("no secret-key (is it the public .key file? use the .key_secret one)")
		}
		if err != nil {
			return keyPair{}, fmt.Errorf("curve secret_key_file %s: %w", c.SecretKeyFile, err)
		}
		return keyPair{public: zc.Public, secret: zc.Secret}, nil
	}
	kp, created, err := loadOrCreateFrontEndKey(ctx, ctx.Storage())
	if err != nil {
		return kp, err
	}
	if created {
		logger.Info("generated the front end's CURVE keypair and stored it; give workers its public key",
			zap.String("public_key", kp.public), zap.String("storage_key", frontEndKeyPath))
	}
	return kp, nil
}

// allowed gathers the allow-list: inline keys, then the directory's files.
func (c *Curve) allowed() (map[string]string, error) {
	keys := make(map[string]string, len(c.Allow))
	for _, k := range c.Allow {
		keys[k] = "inline"
	}
	if c.AllowDir != "" {
		dir, err := loadKeyDir(c.AllowDir)
		if errors.Is(err, fs.ErrNotExist) {
			// A fresh setup: no worker is allowed yet, which the
			// authorizer logs with how to allow one.
			return keys, nil
		}
		if err != nil {
			return nil, fmt.Errorf("zmq: curve allow_dir: %w", err)
		}
		maps.Copy(keys, dir)
	}
	return keys, nil
}

// curveSetup is what Provision resolved for the pools that use CURVE.
type curveSetup struct {
	kp      keyPair
	allowed map[string]string
}

// provisionCurve resolves keys once per config (nil without curve).
func (h *Handler) provisionCurve(ctx caddy.Context) (*curveSetup, error) {
	if h.Curve == nil {
		return nil, nil
	}
	if !zmq.HasCurve() {
		return nil, fmt.Errorf("zmq: curve: this libzmq was built without CURVE (libsodium)")
	}
	kp, err := h.Curve.frontEndKey(ctx, h.logger)
	if err != nil {
		return nil, fmt.Errorf("zmq: curve: %w", err)
	}
	allowed, err := h.Curve.allowed()
	if err != nil {
		return nil, err
	}
	return &curveSetup{kp: kp, allowed: allowed}, nil
}

// startCurve registers the transport's allow-list with the ZAP handler,
// which must be running before any CURVE socket binds or connects.
func (t *transport) startCurve(zctx *zmq.Context) error {
	if t.cfg.curveSecret == "" {
		return nil
	}
	zh, err := startZAP(zctx)
	if err != nil {
		return err
	}
	t.auth = newAuthorizer(t.cfg.key(), t.logger)
	t.zap = zh
	zh.register(t.cfg.key(), t.auth, false)
	zh.register(ctlZapDomain(t.cfg.key()), t.auth, true)
	return nil
}

// stopCurve forgets the transport's domains: later handshakes on them fail.
func (t *transport) stopCurve() {
	if t.zap != nil {
		t.zap.unregister(t.cfg.key(), t.auth)
		t.zap.unregister(ctlZapDomain(t.cfg.key()), t.auth)
	}
}

// ctlZapDomain is the ZAP domain of a transport's control socket: a domain
// of its own, so that the ZAP handler knows a handshake is a control
// connection's (libzmq says nothing else about it to ZAP) and can record
// it (redial.go).
func ctlZapDomain(domain string) string { return domain + "|control" }

// Frame size caps (ZMQ_MAXMSGSIZE): libzmq drops the connection of a peer
// that announces a larger frame before reading it, so no peer makes Caddy
// take in more than this. Control messages are short; the request socket
// reads nothing but handshakes.
const (
	maxControlMsg   = 256 << 10
	maxRequestInMsg = 4 << 10
	// replyFrameSlack covers a reply frame's sender, ids and netstring
	// around a body of max_buffered_reply (or reply_window, if larger)
	// bytes: a bigger frame could never be delivered anyway.
	replyFrameSlack = 64 << 10
)

// secure sets what every socket of the transport gets from the security
// settings: the frame size cap for its type, and CURVE (server role) with
// the transport's ZAP domain. Called before the socket binds or connects.
func (t *transport) secure(s *zmq.Socket) error {
	typ, err := s.GetType()
	if err != nil {
		return err
	}
	limit := int64(maxRequestInMsg)
	domain := t.cfg.key()
	switch typ {
	case zmq.SUB:
		limit = t.cfg.maxReplyFrame
	case zmq.ROUTER:
		limit = maxControlMsg
		domain = ctlZapDomain(domain)
	}
	if limit > 0 {
		if err := s.SetMaxmsgsize(limit); err != nil {
			return fmt.Errorf("setting ZMQ_MAXMSGSIZE: %w", err)
		}
	}
	if t.cfg.curveSecret == "" {
		return nil
	}
	return firstError(
		s.SetZapDomain(domain),
		s.SetCurveServer(1),
		s.SetCurveSecretkey(t.cfg.curveSecret),
	)
}

// checkReplyFrame is the error of a reply frame too big to ever fit the
// buffer: the worker sent more in one frame than max_buffered_reply, which
// is not the client's fault.
func checkReplyFrame(size, maxBuffered int, worker string) error {
	if maxBuffered > 0 && size > maxBuffered {
		if worker == "" {
			worker = "(not on the control channel)"
		}
		return fmt.Errorf("%w: a single reply frame of %d bytes from worker %s exceeds max_buffered_reply (%d bytes); "+
			"the worker must send large responses in smaller frames", errReplyFrameTooBig, size, worker, maxBuffered)
	}
	return nil
}

var errReplyFrameTooBig = fmt.Errorf("reply frame too big")

// warnPlaintextExposure logs, at startup, each endpoint of a pool without
// CURVE that other hosts can reach: anyone there could take requests
// (cookies and Authorization headers included) or inject replies.
func warnPlaintextExposure(logger *zap.Logger, pool string, endpoints ...string) {
	for _, ep := range endpoints {
		if ep == "" || !exposed(ep) {
			continue
		}
		logger.Warn("endpoint reachable from other hosts without CURVE: anyone who can connect can read requests and forge replies; "+
			"turn on curve (see docs/security.md) or bind to 127.0.0.1",
			zap.String("pool", pool), zap.String("endpoint", ep))
	}
}

// exposed reports whether a tcp endpoint is on a non-loopback address.
func exposed(ep string) bool {
	u, err := url.Parse(ep)
	if err != nil || (u.Scheme != "tcp" && u.Scheme != "ws" && u.Scheme != "wss") {
		return false
	}
	host := u.Hostname()
	if i := strings.LastIndexByte(host, ';'); i >= 0 { // source;host
		host = host[i+1:]
	}
	if host == "localhost" {
		return false
	}
	ip := net.ParseIP(host)
	return ip == nil || !ip.IsLoopback()
}

// holderOK reports whether a message about ex from the worker with the
// given key (the ZAP user id; "" without CURVE) may be taken: the first key
// heard about a request becomes its holder, and only it may reply, ACK or
// NACK it from then on.
func (ex *exchange) holderOK(key string) bool {
	if key == "" {
		return true
	}
	ex.mu.Lock()
	defer ex.mu.Unlock()
	if ex.holderKey == "" {
		ex.holderKey = key
		return true
	}
	return ex.holderKey == key
}

// workerKeys binds control-channel identities to the CURVE keys that
// speak for them: a worker id first heard with one key cannot be used by
// another while it is known.
type workerKeys struct {
	mu   sync.Mutex
	keys map[string]string
}

// admit reports whether key may speak for worker (binding it if new).
func (w *workerKeys) admit(worker, key string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.keys == nil {
		w.keys = make(map[string]string)
	}
	bound, ok := w.keys[worker]
	if !ok {
		w.keys[worker] = key
		return true
	}
	return bound == key
}

func (w *workerKeys) forget(worker string) {
	w.mu.Lock()
	delete(w.keys, worker)
	w.mu.Unlock()
}

// admit reports whether a control message from worker, sent with CURVE key
// key, may be handled. With CURVE every message must carry a key (libzmq
// gives each one its peer's ZAP user id), and a worker id belongs to the
// first key that used it until the worker is forgotten: a worker cannot
// speak for another.
func (c *controlPlane) admit(worker, key string, payload []byte) bool {
	if c.t.auth == nil {
		return true
	}
	if key != "" && !c.t.auth.allows(key) {
		// Its key left the allow-list by reload: it is no longer heard
		// (dropKeys closes its connection; this came before).
		c.t.warnPeer("dropping a control message from a worker whose key is no longer allowed", key,
			zap.String("worker", worker))
		c.failTakenByRemoved(payload)
		return false
	}
	if key == "" || !c.ids.admit(worker, key) {
		c.t.warnPeer("dropping a control message under a worker id that belongs to another CURVE key", key,
			zap.String("worker", worker))
		return false
	}
	return true
}

// mayHold reports whether worker (with CURVE key key) may send verb about
// ex: a request that another worker acknowledged, or (with CURVE) whose
// reply came from another key, is not its business.
func (c *controlPlane) mayHold(ex *exchange, worker, key string, verb zmqx.Verb) bool {
	if w := ex.workerID(); w != "" && w != worker {
		c.t.warnPeer("dropping a control message about a request another worker holds", key,
			zap.Stringer("verb", verb), zap.String("worker", worker), zap.String("holder", w), zap.Uint64("conn_id", ex.id))
		return false
	}
	if !ex.holderOK(key) {
		c.t.warnPeer("dropping a control message about a request another worker key holds", key,
			zap.Stringer("verb", verb), zap.String("worker", worker), zap.Uint64("conn_id", ex.id))
		return false
	}
	return true
}

// attachCurve applies this config's CURVE settings to a transport it
// shares: the allow-list is the newest config's; the keys are fixed in the
// sockets.
func (h *Handler) attachCurve(t *transport, cfg transportConfig, cs *curveSetup, p Pool) error {
	if t.cfg.curveSecret != cfg.curveSecret {
		return fmt.Errorf("zmq: pool %s: endpoints %s and %s are in use with other curve settings (on/off or front end key); "+
			"changing those needs new endpoints or a restart", p.Name, p.RequestEndpoint, p.ReplyEndpoint)
	}
	if t.auth == nil {
		eps := []string{p.RequestEndpoint, p.ReplyEndpoint, p.ControlEndpoint}
		for _, w := range p.Workers {
			eps = append(eps, w.RequestEndpoint, w.ReplyEndpoint)
		}
		warnPlaintextExposure(h.logger, p.Name, eps...)
		return nil
	}
	t.dropKeys(t.auth.setAllowed(maps.Clone(cs.allowed)))
	h.logger.Info("CURVE on: workers need the front end's public key and an allowed keypair",
		zap.String("pool", p.Name), zap.String("frontend_public_key", cs.kp.public), zap.Int("allowed_keys", len(cs.allowed)))
	return nil
}

// CURVE handshake failures as libzmq's monitor reports them
// (HANDSHAKE_FAILED_PROTOCOL's value, zmq.h ZMQ_PROTOCOL_ERROR_ZMTP_*).
const (
	protocolErrMechanismMismatch = 0x11000002 // the peer is plaintext (NULL)
	protocolErrCryptographic     = 0x11000001 // its HELLO does not decrypt: wrong server key
)

// noteHandshake counts and logs (once per reason and endpoint) a failed
// handshake seen by a socket monitor. The ZAP handler already logs refused
// keys; the monitor sees what never reaches it: plaintext peers and peers
// that encrypt for another server key. libzmq's monitor names the socket's
// endpoint, not the peer's address.
func (t *transport) noteHandshake(ev zmq.Event, endpoint string, value int) {
	if t.auth == nil {
		return
	}
	switch ev {
	case zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
		switch value {
		case protocolErrMechanismMismatch:
			t.auth.refuse(refusedPlaintext, endpoint, "")
		case protocolErrCryptographic:
			t.auth.refuse(refusedWrongServer, endpoint, "")
		default:
			t.auth.refuse(refusedHandshake, endpoint, "")
		}
	case zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
		// A peer that hung up mid-handshake. A plaintext peer often
		// does (it sees the mismatch first and gives up for good), so
		// this is logged too, once per endpoint.
		t.auth.refuse(refusedHandshake, endpoint, "")
	}
}

var handshakeMonitorSeq atomic.Uint64

// watchHandshakes logs the failed handshakes of a CURVE socket (the reply
// and control sockets; the request socket's peer monitor does it there),
// and feeds ct (if not nil) the socket's connections, calling gone (if not
// nil) with each one that ends. The reader is connected before sock
// binds; sock's owner calls the returned stop function before it closes
// sock (stopMonitorFunc).
func (t *transport) watchHandshakes(zctx *zmq.Context, sock *zmq.Socket, ct *connTracker, gone func(*peerConn)) (func(), error) {
	if t.auth == nil {
		return func() {}, nil
	}
	done, stop := make(chan struct{}), make(chan struct{})
	addr := "inproc://caddy-zmq-handshakes-" + strconv.FormatUint(handshakeMonitorSeq.Add(1), 10)
	events := zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
	if ct != nil {
		events |= zmq.EVENT_ACCEPTED | zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED
	}
	if err := sock.Monitor(addr, events); err != nil {
		return nil, err
	}
	mon, err := zctx.NewSocket(zmq.PAIR)
	if err == nil {
		err = firstError(mon.SetLinger(0), mon.SetRcvtimeo(recvPollInterval), mon.Connect(addr))
	}
	if err != nil {
		if mon != nil {
			_ = mon.Close()
		}
		return nil, fmt.Errorf("monitoring handshakes: %w", err)
	}
	go func() {
		defer close(done)
		defer mon.Close()
		for {
			ev, endpoint, value, err := mon.RecvEvent(0)
			if err == nil {
				t.noteHandshake(ev, endpoint, value)
				if ct != nil {
					if pc := ct.event(ev, value, time.Now()); pc != nil && gone != nil {
						gone(pc)
					}
				}
				continue
			}
			select {
			case <-stop:
				return
			default:
			}
		}
	}()
	return stopMonitorFunc(sock, stop, done), nil
}
