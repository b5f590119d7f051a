package conformance

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
	"github.com/zmqbridge/caddy-zmq/workerkit"
)

// A tamper sits between the kit and a workerkit worker and changes what
// passes, so that the pair is a worker broken in one known way: each case
// of the kit must catch its breakage.
type tamper struct {
	// up: a control message from the worker; nil drops it. inject are
	// control messages for the worker.
	up func(payload []byte) (out []byte, inject [][]byte)
	// down: a control message to the worker; false drops it.
	down func(payload []byte) bool
	// request: a frame of the request socket; nil drops it. reply is sent
	// to the kit as if the worker had.
	request func(frame []byte) (out, reply []byte)
	// reHello: the tamper says HELLO itself each time its own control
	// connection to the kit is made again, while the worker behind it,
	// whose connection to the tamper stays, goes on as if nothing
	// happened: a worker that counts a new connection up at HELLO.
	reHello bool
	// reply: a reply frame; nil drops it.
	reply func(frame []byte) []byte
}

const tamperWorkerID = "wk-tampered"

var tamperMonitors atomic.Uint64

// runTamper connects to the kit at up, binds for the worker, and relays
// until ctx ends. It returns the endpoints for the worker.
func runTamper(t *testing.T, ctx context.Context, up Endpoints, tp tamper) Endpoints {
	t.Helper()
	zctx, err := zmq.NewContext()
	if err != nil {
		t.Fatal(err)
	}
	mk := func(ty zmq.Type) *zmq.Socket {
		s, err := zctx.NewSocket(ty)
		if err != nil {
			t.Fatal(err)
		}
		_ = s.SetLinger(0)
		return s
	}
	pull, xpub, dealer := mk(zmq.PULL), mk(zmq.XPUB), mk(zmq.DEALER)
	push, xsub, router := mk(zmq.PUSH), mk(zmq.XSUB), mk(zmq.ROUTER)
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(dealer.SetIdentity(tamperWorkerID))
	var mon *zmq.Socket
	if tp.reHello {
		ep := "inproc://tamper-monitor-" + strconv.FormatUint(tamperMonitors.Add(1), 10)
		must(dealer.Monitor(ep, zmq.EVENT_HANDSHAKE_SUCCEEDED))
		mon = mk(zmq.PAIR)
		must(mon.Connect(ep))
	}
	var down Endpoints
	var e error
	down.Requests, e = bindFree(push, "")
	must(e)
	down.Replies, e = bindFree(xsub, "")
	must(e)
	down.Control, e = bindFree(router, "")
	must(e)
	must(pull.Connect(up.Requests))
	must(xpub.Connect(up.Replies))
	must(dealer.Connect(up.Control))

	var wg sync.WaitGroup
	wg.Add(1)
	t.Cleanup(func() {
		wg.Wait()
		_ = zctx.Term()
	})
	go func() {
		defer wg.Done()
		defer func() {
			if mon != nil {
				// Before the reader goes: libzmq sends monitor events with
				// a blocking send.
				_ = dealer.Monitor("", 0)
				_ = mon.Close()
			}
			for _, s := range []*zmq.Socket{pull, xpub, dealer, push, xsub, router} {
				_ = s.Close()
			}
		}()
		p := zmq.NewPoller()
		for _, s := range []*zmq.Socket{pull, xpub, dealer, xsub, router} {
			p.Add(s, zmq.POLLIN)
		}
		if mon != nil {
			p.Add(mon, zmq.POLLIN)
		}
		handshakes := 0
		var pending [][]byte // requests for the worker, which may not be connected yet
		for ctx.Err() == nil {
			for len(pending) > 0 {
				if _, err := push.SendBytes(pending[0], zmq.DONTWAIT); err != nil {
					break
				}
				pending = pending[1:]
			}
			polled, err := p.Poll(10 * time.Millisecond)
			if err != nil && !errors.Is(err, zmq.Errno(4)) {
				return
			}
			for _, pd := range polled {
				if pd.Socket == mon {
					if ev, _, _, err := mon.RecvEvent(zmq.DONTWAIT); err == nil && ev == zmq.EVENT_HANDSHAKE_SUCCEEDED {
						if handshakes++; handshakes > 1 {
							_, _ = dealer.SendBytes(zmqx.AppendHello(nil, 4), zmq.DONTWAIT)
						}
					}
					continue
				}
				msg, err := pd.Socket.RecvMessageBytes(zmq.DONTWAIT)
				if err != nil {
					continue
				}
				switch pd.Socket {
				case pull: // kit -> worker requests
					out, rep := msg[0], []byte(nil)
					if tp.request != nil {
						out, rep = tp.request(out)
					}
					if rep != nil {
						_, _ = xpub.SendBytes(rep, zmq.DONTWAIT)
					}
					if out != nil {
						pending = append(pending, out)
					}
				case xpub: // the kit's subscription
					_, _ = xsub.SendBytes(msg[0], zmq.DONTWAIT)
				case xsub: // worker -> kit replies
					out := msg[0]
					if tp.reply != nil {
						out = tp.reply(out)
					}
					if out != nil {
						_, _ = xpub.SendBytes(out, zmq.DONTWAIT)
					}
				case dealer: // kit -> worker control
					if tp.down == nil || tp.down(msg[0]) {
						_, _ = router.SendMessage(tamperWorkerID, msg[0])
					}
				case router: // worker -> kit control
					if len(msg) < 2 {
						continue
					}
					out, inject := msg[1], [][]byte(nil)
					if tp.up != nil {
						out, inject = tp.up(out)
					}
					if out != nil {
						_, _ = dealer.SendBytes(out, zmq.DONTWAIT)
					}
					for _, m := range inject {
						_, _ = router.SendMessage(tamperWorkerID, m)
					}
				}
			}
		}
	}()
	return down
}

func dropVerb(verb zmqx.Verb) func([]byte) ([]byte, [][]byte) {
	return func(p []byte) ([]byte, [][]byte) {
		if isVerb(p, verb) {
			return nil, nil
		}
		return p, nil
	}
}

func isVerb(p []byte, verb zmqx.Verb) bool {
	m, _ := zmqx.Parse(p)
	return m.Verb == verb
}

// withoutHeader re-encodes a request frame without the named header.
func withoutHeader(frame []byte, name string) []byte {
	req, err := mongrel2.ParseRequest(frame)
	if err != nil {
		return frame
	}
	var e mongrel2.HeaderEncoder
	e.Reset(mongrel2.FormatJSON)
	for _, h := range req.Headers {
		if h.Name != name {
			e.AddList(h.Name, h.Values)
		}
	}
	return mongrel2.AppendRequest(nil, req.Sender, req.ConnID, req.Path, e.Bytes(), req.Body)
}

func hasHeader(frame []byte, name string) bool {
	req, err := mongrel2.ParseRequest(frame)
	return err == nil && req.Header(name) != ""
}

// TestEachCaseCanFail runs each case against a worker broken in the way
// that case looks for, and requires the case to fail.
func TestEachCaseCanFail(t *testing.T) {
	tests := []struct {
		name, caseName string
		tp             tamper
	}{
		{"malformed reply", "mongrel2/round-trip", tamper{reply: func(f []byte) []byte {
			return bytes.Replace(f, []byte("HTTP/1.1 "), []byte("HTPT/1.1 "), 1)
		}}},
		{"answers disconnect notices", "mongrel2/disconnect-notice", tamper{request: func(f []byte) ([]byte, []byte) {
			req, err := mongrel2.ParseRequest(f)
			if err == nil && req.IsDisconnect() {
				return f, mongrel2.AppendReplyOne(nil, req.Sender, req.ConnID, []byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
			}
			return f, nil
		}}},
		{"no HELLO", "zmqx/hello", tamper{up: dropVerb(zmqx.Hello)}},
		{"no heartbeat", "zmqx/heartbeat", tamper{up: dropVerb(zmqx.Heartbeat)}},
		{"chokes on unknown headers", "zmqx/ignores-unknown", tamper{request: func(f []byte) ([]byte, []byte) {
			if hasHeader(f, unknownHeader) {
				return nil, nil
			}
			return f, nil
		}}},
		{"never ACKs", "zmqx/ack", tamper{up: dropVerb(zmqx.Ack)}},
		{"ignores the dispatch deadline", "zmqx/deadline", tamper{request: func(f []byte) ([]byte, []byte) {
			return withoutHeader(f, zmqx.HeaderDeadline), nil
		}}},
		{"checks the deadline only on arrival", "zmqx/deadline-queued", tamper{request: func(f []byte) ([]byte, []byte) {
			req, err := mongrel2.ParseRequest(f)
			if err != nil {
				return f, nil
			}
			ms, ok := zmqx.ParseDeadline(req.Header(zmqx.HeaderDeadline))
			if !ok {
				return f, nil
			}
			if time.Now().UnixMilli() > ms {
				return nil, nil // late on arrival: dropped
			}
			return withoutHeader(f, zmqx.HeaderDeadline), nil // and never checked again
		}}},
		{"ignores ZMQX_CONFIRM", "zmqx/confirm", tamper{request: func(f []byte) ([]byte, []byte) {
			return withoutHeader(f, zmqx.HeaderConfirm), nil
		}}},
		{"ignores credit", "zmqx/credit", tamper{up: func(p []byte) ([]byte, [][]byte) {
			if !isVerb(p, zmqx.Ack) {
				return p, nil
			}
			m, _ := zmqx.Parse(p)
			var inject [][]byte
			for id, rest := zmqx.NextID(m.IDs); id != nil; id, rest = zmqx.NextID(rest) {
				inject = append(inject, creditPayload(string(id), 1<<30))
			}
			return p, inject
		}}},
		{"runs more than max_concurrent", "zmqx/max-concurrent", tamper{up: func(p []byte) ([]byte, [][]byte) {
			if isVerb(p, zmqx.Hello) {
				return zmqx.AppendHello(nil, 2), nil
			}
			return p, nil
		}}},
		{"ignores disconnects", "zmqx/disconnect", tamper{
			down: func(p []byte) bool { return !isVerb(p, zmqx.Disconnect) },
			request: func(f []byte) ([]byte, []byte) {
				if req, err := mongrel2.ParseRequest(f); err == nil && req.IsDisconnect() {
					return nil, nil
				}
				return f, nil
			}}},
		{"ignores PAUSE", "zmqx/pause-resume", tamper{down: func(p []byte) bool { return !isVerb(p, zmqx.Pause) }}},
		{"never grants upload credit", "zmqx/upload", tamper{up: dropVerb(zmqx.UploadCredit)}},
		{"takes requests before WELCOME", "zmqx/welcome", tamper{reHello: true}},
		{"no BYE", "zmqx/bye", tamper{up: dropVerb(zmqx.Bye)}},
	}
	covered := map[string]bool{}
	for _, tt := range tests {
		covered[tt.caseName] = true
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			k, err := Start(Config{Path: "/", BigPath: "/big", UploadPath: "/upload",
				Timeout: 3 * time.Second, Quiet: 300 * time.Millisecond, ControlWait: time.Second,
				Cases: []string{"mongrel2/round-trip", tt.caseName}, Logf: t.Logf})
			if err != nil {
				t.Fatal(err)
			}
			defer k.Close()
			inner := runTamper(t, ctx, k.Endpoints(), tt.tp)
			stop := startTestWorker(t, inner)
			var once sync.Once
			defer once.Do(stop)
			k.cfg.Stop = func() { once.Do(stop) }
			rep := k.Run(ctx)
			res, ok := rep.Result(tt.caseName)
			if !ok || res.Status != Fail {
				t.Errorf("case %s against a worker that %s: %v %s, want FAIL\n%s", tt.caseName, tt.name, res.Status, res.Detail, rep.Table())
			}
		})
	}
	for _, name := range CaseNames() {
		if !covered[name] {
			t.Errorf("case %s has no broken worker that proves it can fail", name)
		}
	}
}

// startTestWorker runs workerkit, the reference worker, on ep.
func startTestWorker(t *testing.T, ep Endpoints) func() {
	ctx, cancel := context.WithCancel(context.Background())
	w := &workerkit.Worker{FrontEnds: []workerkit.FrontEnd{{Requests: ep.Requests, Replies: ep.Replies, Control: ep.Control}},
		Handler: testHandler(), MaxConcurrent: 4, ID: tamperWorkerID,
		// Requests a broken worker never finishes must not hold the test up.
		ShutdownTimeout: time.Second}
	done := make(chan error, 1)
	go func() { done <- w.Serve(ctx) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker: %v", err)
		}
	}
}
