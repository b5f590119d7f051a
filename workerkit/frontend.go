package workerkit

import (
	"errors"
	"flag"
	"strconv"
	"strings"
)

// FrontEnd is one Caddy (or Mongrel2) instance a worker serves. A worker may
// serve several, so that front ends can be restarted or scaled one at a time
// while the worker keeps answering the others.
type FrontEnd struct {
	// Requests is the endpoint of the front end's request socket (PUSH,
	// Mongrel2 send_spec), e.g. tcp://127.0.0.1:9997.
	Requests string
	// Replies is the endpoint of the front end's reply socket (SUB, Mongrel2
	// recv_spec), e.g. tcp://127.0.0.1:9996.
	Replies string
	// Control is the endpoint of the front end's control socket (ROUTER,
	// protocol extension zmqx/1), e.g. tcp://127.0.0.1:9995. Empty: no
	// control channel, which is what Mongrel2 and a front end without
	// control_endpoint need. With it the worker reports liveness, learns at
	// once when a client goes away, and paces large replies to the speed of
	// each client (see the package documentation).
	Control string
	// Bind reverses the topology, reverse_proxy style: the worker BINDS
	// Requests (its PULL socket) and Replies (its XPUB socket), and the
	// front ends connect to them (the Caddy module's `to <requests>
	// <replies>` lines in a pool). Endpoints are then addresses to listen
	// on, e.g. tcp://*:7001 and tcp://*:7002. Several front ends may
	// connect to one binding worker. There is no control channel in this
	// mode: Control must be empty. See "Bind mode" in the package
	// documentation.
	Bind bool

	// ServerKey is the front end's CURVE public key (40 characters of
	// Z85; `caddy zmq frontend-key` prints it). With it, every socket to
	// this front end runs CURVE, encrypted and authenticated, and
	// SecretKey is required. Empty: plaintext. See curve.go.
	ServerKey string
	// PublicKey and SecretKey are this worker's CURVE keypair (Z85); the
	// front end must allow PublicKey. PublicKey may be left empty: it is
	// derived from SecretKey.
	PublicKey, SecretKey string
}

// DefaultFrontEnd is the endpoint pair used by Mongrel2's examples and by the
// module's defaults, so that a worker started without configuration finds a
// front end started without configuration.
var DefaultFrontEnd = FrontEnd{
	Requests: "tcp://127.0.0.1:9997",
	Replies:  "tcp://127.0.0.1:9996",
}

// bindPrefix marks a front end in bind mode in the string form.
const bindPrefix = "bind:"

// String returns the form ParseFrontEnd accepts, so a FrontEnd round-trips
// through flags and configuration files.
func (f FrontEnd) String() string {
	s := f.Requests + "," + f.Replies
	if f.Control != "" {
		s += "," + f.Control
	}
	if f.Bind {
		s = bindPrefix + s
	}
	return s
}

// ParseFrontEnd parses "tcp://host:9997,tcp://host:9996" (requests,replies)
// or "tcp://host:9997,tcp://host:9996,tcp://host:9995"
// (requests,replies,control): one flag or environment variable then
// describes a whole front end. "bind:tcp://*:7001,tcp://*:7002" is a front
// end in bind mode (FrontEnd.Bind): the worker binds those two endpoints and
// front ends connect to them.
func ParseFrontEnd(s string) (FrontEnd, error) {
	if rest, ok := strings.CutPrefix(s, bindPrefix); ok {
		parts := strings.Split(rest, ",")
		if len(parts) != 2 {
			return FrontEnd{}, errors.New("workerkit: front end " + strconv.Quote(s) +
				": want bind:REQUESTS,REPLIES (two endpoints to bind, separated by a comma; no control channel in bind mode)")
		}
		f := FrontEnd{Requests: strings.TrimSpace(parts[0]), Replies: strings.TrimSpace(parts[1]), Bind: true}
		if err := f.validate(); err != nil {
			return FrontEnd{}, err
		}
		return f, nil
	}
	parts := strings.Split(s, ",")
	if len(parts) != 2 && len(parts) != 3 {
		return FrontEnd{}, errors.New("workerkit: front end " + strconv.Quote(s) +
			": want REQUESTS,REPLIES or REQUESTS,REPLIES,CONTROL (endpoints separated by commas), or bind:REQUESTS,REPLIES")
	}
	f := FrontEnd{Requests: strings.TrimSpace(parts[0]), Replies: strings.TrimSpace(parts[1])}
	if len(parts) == 3 {
		f.Control = strings.TrimSpace(parts[2])
		if f.Control == "" {
			return FrontEnd{}, errors.New("workerkit: front end " + strconv.Quote(s) + ": empty control endpoint")
		}
	}
	if err := f.validate(); err != nil {
		return FrontEnd{}, err
	}
	return f, nil
}

func (f FrontEnd) validate() error {
	if err := f.validateCurve(); err != nil {
		return err
	}
	if f.Bind {
		if f.Control != "" {
			return errors.New("workerkit: front end " + strconv.Quote(f.Requests+","+f.Replies) +
				": bind mode has no control channel; leave Control empty")
		}
		if f.Requests == f.Replies {
			return errors.New("workerkit: bind mode: requests and replies need two different endpoints, got " + strconv.Quote(f.Requests) + " twice")
		}
	}
	if err := checkEndpoint(f.Requests, f.Bind); err != nil {
		return errors.New("workerkit: requests endpoint: " + err.Error())
	}
	if err := checkEndpoint(f.Replies, f.Bind); err != nil {
		return errors.New("workerkit: replies endpoint: " + err.Error())
	}
	if f.Control != "" {
		if err := checkEndpoint(f.Control, false); err != nil {
			return errors.New("workerkit: control endpoint: " + err.Error())
		}
	}
	return nil
}

// checkEndpoint rejects what libzmq would only reject later: the request
// endpoint is connected only once the front end has subscribed, which can be
// long after startup, so a typo must be caught before that. bind: the
// endpoint is one to listen on (host may be * or an interface name).
func checkEndpoint(e string, bind bool) error {
	q := strconv.Quote(e)
	transport, addr, ok := strings.Cut(e, "://")
	if !ok || addr == "" {
		return errors.New(q + ": want TRANSPORT://ADDRESS, e.g. tcp://127.0.0.1:9997")
	}
	for i := 0; i < len(e); i++ {
		if c := e[i]; c <= ' ' || c == 0x7f {
			return errors.New(q + ": contains white space or control characters")
		}
	}
	switch transport {
	case "tcp", "ws", "wss":
		// libzmq connect syntax: [source;]host:port
		if _, a, ok := strings.Cut(addr, ";"); ok {
			if bind {
				return errors.New(q + ": a source address (SOURCE;HOST:PORT) is for connecting, not binding")
			}
			addr = a
		}
		if transport != "tcp" {
			if i := strings.IndexByte(addr, '/'); i >= 0 {
				addr = addr[:i]
			}
		}
		i := strings.LastIndexByte(addr, ':')
		if i <= 0 {
			return errors.New(q + ": want host:port")
		}
		host, port := addr[:i], addr[i+1:]
		if strings.HasPrefix(host, "[") != strings.HasSuffix(host, "]") {
			return errors.New(q + ": unbalanced brackets around IPv6 address")
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 || len(port) > 5 {
			if bind {
				// An ephemeral port (*) could not be found by the front ends.
				return errors.New(q + ": port must be 1-65535 (front ends must know where to connect, so * is not allowed)")
			}
			return errors.New(q + ": port must be 1-65535 (a worker connects, so * is not allowed)")
		}
		if host == "*" && !bind {
			return errors.New(q + ": host * is for binding; a worker connects to a front end's address (or use bind mode)")
		}
	case "ipc", "tipc", "vmci", "pgm", "epgm":
	case "inproc":
		return errors.New(q + ": inproc cannot reach a front end: the worker has its own ZeroMQ context")
	default:
		return errors.New(q + ": unknown transport " + strconv.Quote(transport))
	}
	return nil
}

// FrontEndList is a flag.Value collecting repeated -frontend flags, so every
// worker binary spells front ends the same way. FrontEndUsage describes the
// flag's value for its help text.
type FrontEndList []FrontEnd

// String lists the front ends in the form Set accepts.
func (l *FrontEndList) String() string {
	if l == nil {
		return ""
	}
	parts := make([]string, len(*l))
	for i, f := range *l {
		parts[i] = f.String()
	}
	return strings.Join(parts, " ")
}

// FrontEndUsage is the help text of a -frontend flag backed by FrontEndList.
const FrontEndUsage = "front end `REQUESTS,REPLIES[,CONTROL]` endpoints, e.g. " +
	"tcp://127.0.0.1:9997,tcp://127.0.0.1:9996,tcp://127.0.0.1:9995 (repeatable; default " +
	"tcp://127.0.0.1:9997,tcp://127.0.0.1:9996); bind:REQUESTS,REPLIES binds them instead (as -bind)"

// BindUsage is the help text of a -bind flag backed by FrontEndList.Bind.
const BindUsage = "bind `REQUESTS,REPLIES` endpoints and let front ends connect to them " +
	"(reverse_proxy style, Caddy's `to` lines), e.g. tcp://*:7001,tcp://*:7002 (repeatable; " +
	"same as -frontend bind:REQUESTS,REPLIES; no control channel)"

// Bind returns a flag.Value that adds front ends in bind mode to l: -bind
// tcp://*:7001,tcp://*:7002 is the same as -frontend
// bind:tcp://*:7001,tcp://*:7002. Both flags may be given, and repeated.
//
//	var fes workerkit.FrontEndList
//	flag.Var(&fes, "frontend", workerkit.FrontEndUsage)
//	flag.Var(fes.Bind(), "bind", workerkit.BindUsage)
func (l *FrontEndList) Bind() flag.Value { return bindList{l} }

type bindList struct{ l *FrontEndList }

func (b bindList) String() string {
	if b.l == nil {
		return ""
	}
	var parts []string
	for _, f := range *b.l {
		if f.Bind {
			parts = append(parts, f.Requests+","+f.Replies)
		}
	}
	return strings.Join(parts, " ")
}

func (b bindList) Set(s string) error {
	if strings.HasPrefix(s, bindPrefix) {
		return b.l.Set(s)
	}
	return b.l.Set(bindPrefix + s)
}

// Set adds one front end; it is what makes the flag repeatable.
func (l *FrontEndList) Set(s string) error {
	f, err := ParseFrontEnd(s)
	if err != nil {
		return err
	}
	*l = append(*l, f)
	return nil
}
