package caddyzmq

import (
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	zmq "github.com/pebbe/zmq4"
	"go.uber.org/zap"
)

// ZAP (ZeroMQ Authentication Protocol, RFC 27) is how libzmq asks whether a
// CURVE client may connect: it sends a request to whatever is bound to
// inproc://zeromq.zap.01 IN THE SOCKET'S CONTEXT. Without a handler there,
// libzmq accepts every client key: encryption without authentication.
// pebbe/zmq4's AuthStart serves only the default context (the module has
// its own), so the module runs its own handler, one per process like the
// context.

// zapEndpoint is the address libzmq sends ZAP requests to.
const zapEndpoint = "inproc://zeromq.zap.01"

// zapHandler answers ZAP requests from the allow-lists of the transports:
// each CURVE transport registers a domain (ZMQ_ZAP_DOMAIN on its sockets)
// with its authorizer. The allow-list is read at each request, so a reload
// that changes it takes effect for the next handshake, while connections
// already made stay up.
type zapHandler struct {
	mu      sync.RWMutex
	domains map[string]zapDomain
}

// zapDomain is what a ZAP domain belongs to: a transport's authorizer, and
// whether the domain is its control socket's (ctlZapDomain), whose
// approvals the authorizer records (redial.go).
type zapDomain struct {
	a       *authorizer
	control bool
}

// zapHandlers serves the process's one libzmq context (see zmqContext); a
// process-wide registry because libzmq's is.
var zapHandlers struct {
	once sync.Once
	h    *zapHandler
	err  error
	// sock is referenced here for the life of the process: pebbe closes
	// unreachable sockets, and the handler must outlive every config.
	sock *zmq.Socket
}

// startZAP binds the ZAP handler in zctx once, before any CURVE socket
// binds or connects (a handshake that finds no handler is let through).
// A ROUTER, not a REP: a REP whose reply fails half way refuses every later
// receive, and every handshake in the process would then hang.
func startZAP(zctx *zmq.Context) (*zapHandler, error) {
	zapHandlers.once.Do(func() {
		sock, err := zctx.NewSocket(zmq.ROUTER)
		if err == nil {
			err = firstError(sock.SetLinger(0), sock.Bind(zapEndpoint))
		}
		if err != nil {
			zapHandlers.err = fmt.Errorf("starting the ZAP handler (CURVE authentication): %w", err)
			return
		}
		h := &zapHandler{domains: make(map[string]zapDomain)}
		zapHandlers.h, zapHandlers.sock = h, sock
		go h.serve(sock)
	})
	return zapHandlers.h, zapHandlers.err
}

func firstError(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func (h *zapHandler) register(domain string, a *authorizer, control bool) {
	h.mu.Lock()
	h.domains[domain] = zapDomain{a: a, control: control}
	h.mu.Unlock()
}

func (h *zapHandler) unregister(domain string, a *authorizer) {
	h.mu.Lock()
	if h.domains[domain].a == a {
		delete(h.domains, domain)
	}
	h.mu.Unlock()
}

// serve runs for the life of the process, as the context does. A ZAP
// request that cannot be parsed is refused, never let through.
func (h *zapHandler) serve(sock *zmq.Socket) {
	for {
		msg, err := sock.RecvMessageBytes(0)
		if err != nil {
			if zmq.AsErrno(err) == zmq.ETERM {
				return
			}
			continue
		}
		// [peer routing id, empty delimiter, ZAP request frames...]
		if len(msg) < 3 || len(msg[1]) != 0 {
			continue
		}
		reply := h.answer(msg[2:])
		frames := append([]any{msg[0], ""}, reply[:]...)
		_, _ = sock.SendMessage(frames...)
	}
}

// answer turns one ZAP request into its reply frames: version, request id,
// status code, status text, user id, metadata.
func (h *zapHandler) answer(req [][]byte) [6]any {
	// 1.0, request id, domain, address, routing id, mechanism, credentials...
	if len(req) < 6 || string(req[0]) != "1.0" {
		reqID := []byte{}
		if len(req) > 1 {
			reqID = req[1]
		}
		return [6]any{"1.0", reqID, "400", "malformed ZAP request", "", ""}
	}
	domain, address, mechanism := string(req[2]), string(req[3]), string(req[5])
	h.mu.RLock()
	d := h.domains[domain]
	h.mu.RUnlock()
	a := d.a
	status, text, user := "400", "unknown ZAP domain", ""
	switch {
	case a == nil && mechanism == "NULL":
		// A plaintext pool's socket, should libzmq ask about it (4.3.4
		// does not for sockets without a ZAP domain, which plaintext
		// pools never set): those pools let everyone in, as Mongrel2.
		status, text = "200", "OK"
	case a == nil:
	case mechanism != "CURVE" || len(req) != 7 || len(req[6]) != 32:
		text = "CURVE required"
		a.refuse(refusedPlaintext, address, "")
	default:
		key := zmq.Z85encode(string(req[6]))
		if a.allows(key) {
			status, text, user = "200", "OK", key
			a.noteAdmitted(key, hostKey(address))
			if d.control {
				a.noteControlApproval(address, key, time.Now())
			}
		} else {
			// 300, "temporary failure", not 400: libzmq gives up on a
			// connection refused with 400 for good, on both sides, so a
			// worker allowed by a later reload would never get in (nor a
			// binding worker that Caddy connects to). With 300 the
			// handshake times out and libzmq dials again by itself.
			status, text = "300", "key not allowed (yet)"
			a.refuse(refusedUnknownKey, address, key)
			a.noteStalled(hostKey(address), time.Now())
		}
	}
	return [6]any{"1.0", req[1], status, text, user, ""}
}

// Reasons a worker is refused, as counted and logged.
const (
	refusedPlaintext     = "plaintext"
	refusedUnknownKey    = "unknown_key"
	refusedWrongServer   = "wrong_server_key"
	refusedHandshake     = "handshake_failed"
	maxRememberedRefusal = 4096
)

// AuthRefusedHook, when set (by the metrics code), is called for every
// refused worker connection with the pool's endpoints and the reason
// (plaintext, unknown_key, wrong_server_key, handshake_failed). It must not
// block: it runs in the ZAP handler and socket monitors.
var AuthRefusedHook func(pool, reason string)

// authorizer holds one transport's allow-list of worker public keys (Z85)
// and says, once per key or peer, why one was refused.
type authorizer struct {
	pool    string // the transport's endpoints, for logs and the hook
	logger  *zap.Logger
	allowed atomic.Pointer[map[string]string] // key -> name (file or "inline")

	refused atomic.Uint64
	mu      sync.Mutex
	// stalled: when a handshake from each host was last answered "not
	// yet" (300): libzmq keeps such a connection open, silent, until its
	// handshake times out (ctlguard.go must not take it for another).
	stalled map[string]time.Time
	seen    map[string]struct{} // refusals already logged, by reason and key or peer
	// hosts: where each allowed key's handshakes came from (ZAP's
	// address, "" for ipc), every socket's, so that removing the key can
	// find its request connections, which carry no message that names it.
	hosts  map[string]map[string]struct{}
	unseen uint64 // refusals not logged because seen was full
	// approvals: the control socket's recent approved handshakes
	// (redial.go), oldest first.
	approvals []approval
}

func newAuthorizer(pool string, logger *zap.Logger) *authorizer {
	a := &authorizer{pool: pool, logger: logger, seen: make(map[string]struct{}),
		hosts: make(map[string]map[string]struct{})}
	empty := map[string]string{}
	a.allowed.Store(&empty)
	return a
}

// setAllowed replaces the allow-list. A key that leaves it is forgotten by
// the refusal log, so that its first refusal from now on is logged; every
// other refusal already logged stays logged once, across reloads (the
// authorizer lives with the sockets, which a reload keeps).
//
// It returns the keys that left the list.
func (a *authorizer) setAllowed(keys map[string]string) (removed []string) {
	old := *a.allowed.Swap(&keys)
	a.mu.Lock()
	for k := range old {
		if _, still := keys[k]; !still {
			a.forgetLocked(k)
			removed = append(removed, k)
		}
	}
	a.mu.Unlock()
	if len(keys) == 0 {
		a.logger.Warn("CURVE is on and no worker key is allowed: every worker is refused. "+
			"Make a key with 'caddy zmq keygen --out <dir>/<name>' and list it under curve { allow <public key> } "+
			"or put its .key file in the allow_dir directory, then 'caddy reload'",
			zap.String("pool", a.pool))
	}
	slices.Sort(removed)
	return removed
}

// maxHostsPerKey bounds what noteAdmitted remembers of one key: a key used
// from more hosts than that is a deployment that removing it by reload
// cannot handle host by host anyway.
const maxHostsPerKey = 256

// noteAdmitted records that key was allowed in from host.
func (a *authorizer) noteAdmitted(key, host string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	hs := a.hosts[key]
	if hs == nil {
		hs = make(map[string]struct{})
		a.hosts[key] = hs
	}
	if len(hs) < maxHostsPerKey {
		hs[host] = struct{}{}
	}
}

// takeHosts returns the hosts key was allowed in from, and forgets them
// (the key has left the allow-list).
func (a *authorizer) takeHosts(key string) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	hs := slices.Sorted(maps.Keys(a.hosts[key]))
	delete(a.hosts, key)
	return hs
}

// forgetLocked drops the logged refusals of key (under a.mu).
func (a *authorizer) forgetLocked(key string) {
	for _, reason := range []string{refusedUnknownKey, refusedPlaintext, refusedWrongServer, refusedHandshake} {
		delete(a.seen, reason+"|"+key)
	}
}

func (a *authorizer) allows(key string) bool {
	_, ok := (*a.allowed.Load())[key]
	return ok
}

// nameOf is the name an allowed key was given (its file), or "".
func (a *authorizer) nameOf(key string) string { return (*a.allowed.Load())[key] }

// count counts a refusal without logging it.
func (a *authorizer) count(reason string) {
	a.refused.Add(1)
	if hook := AuthRefusedHook; hook != nil {
		hook(a.pool, reason)
	}
}

// refuse counts a refusal and logs it the first time for this reason and
// key (or peer address, when there is no key). A worker refused over and
// over (libzmq retries a failed handshake every 100 ms or so) writes one
// line, not one per retry.
func (a *authorizer) refuse(reason, peer, key string) {
	a.count(reason)
	id := reason + "|" + key
	if key == "" {
		id += peer
	}
	a.mu.Lock()
	_, logged := a.seen[id]
	full := len(a.seen) >= maxRememberedRefusal
	if !logged && !full {
		a.seen[id] = struct{}{}
	} else if full && !logged {
		a.unseen++
		logged = a.unseen&(a.unseen-1) != 0 // log at 1, 2, 4, 8, ... only
	}
	unseen := a.unseen
	a.mu.Unlock()
	if logged {
		return
	}
	fields := []zap.Field{zap.String("pool", a.pool), zap.String("reason", reason)}
	if peer != "" {
		fields = append(fields, zap.String("peer", peer))
	}
	if key != "" {
		fields = append(fields, zap.String("public_key", key))
	}
	if unseen > 0 {
		fields = append(fields, zap.Uint64("refusals_not_logged_individually", unseen))
	}
	a.logger.Warn(refusalMessage(reason)+" (logged once per worker; counted in every refusal)", fields...)
}

func refusalMessage(reason string) string {
	switch reason {
	case refusedPlaintext:
		return "refused a worker connection without CURVE: this pool requires encryption (give the worker the front end's public key and a keypair)"
	case refusedUnknownKey:
		return "refused a worker whose public key is not allowed: add it to the pool's curve allow-list (allow <key> or a .key file in allow_dir) and reload to let it in"
	case refusedWrongServer:
		return "refused a worker that failed the CURVE handshake, most likely configured with a wrong front end public key ('caddy zmq frontend-key' prints the right one)"
	default:
		return "a worker connection ended during its handshake: a plaintext worker (it needs the front end's public key and a keypair), " +
			"or a CURVE worker that gave up (wrong server key, or a key not allowed yet)"
	}
}

// noteStalled records that a handshake from host was answered "not yet".
func (a *authorizer) noteStalled(host string, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stalled == nil || len(a.stalled) >= maxRememberedRefusal {
		a.stalled = make(map[string]time.Time)
	}
	a.stalled[host] = now
}

// stalledSince reports whether a handshake from host was answered "not
// yet" at or after since.
func (a *authorizer) stalledSince(host string, since time.Time) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	at, ok := a.stalled[host]
	return ok && !at.Before(since)
}
