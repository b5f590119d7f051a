package conformance

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

// Endpoints are the three sockets the kit binds, as a worker connects to
// them.
type Endpoints struct {
	Requests string // PUSH: the worker connects a PULL
	Replies  string // SUB: the worker connects a PUB
	Control  string // ROUTER: the worker connects a DEALER (zmqx/1)
}

// ctlEvent is one control message from a worker.
type ctlEvent struct {
	at      time.Time
	worker  string
	msg     zmqx.Message // aliases payload
	err     error        // from zmqx.Parse
	payload []byte
}

// exchange is what the kit knows of one request it sent.
type exchange struct {
	id      string
	sentAt  time.Time
	frames  []int // reply body length of each frame, in order
	reply   []byte
	closed  bool // an empty reply frame arrived
	window  int64
	granted int64 // CREDIT sent (the window counts as granted)
	// violation: a frame that broke the credit rule (section 8), if any.
	violation string
	// autoGrant: grant each frame's bytes back as it arrives, as a front
	// end whose client reads fast does.
	autoGrant bool
	complete  bool
	parseErr  error
}

func (x *exchange) outstanding() int64 {
	var sent int64
	for _, n := range x.frames {
		sent += int64(n)
	}
	return sent - (x.granted - x.window)
}

// frontEnd plays a zmqx/1 front end: it binds the three sockets, which one
// goroutine owns, and records what workers send.
type frontEnd struct {
	zctx   *zmq.Context
	ep     Endpoints
	sender string

	out  chan outMsg
	quit chan struct{}
	done chan struct{}

	mu        sync.Mutex
	changed   chan struct{} // closed and replaced on every event
	ctl       []ctlEvent
	exchanges map[string]*exchange
	stray     []string // reply frames the kit cannot match, described
	// stalls are the owner's own delays (time between two turns of its
	// loop beyond its poll), so that the kit's slowness is not blamed on
	// the worker.
	stalls    []stall
	forgotten map[string]bool
	nextID    uint64
	// withhold: the next HELLO is not answered with WELCOME (the welcome
	// case answers it itself). Owner-only.
	withhold bool
}

type outMsg struct {
	socket   int // sockRequest or sockControl
	worker   string
	payload  []byte
	deadline time.Time  // for sockRequest: how long to wait for a peer
	result   chan error // nil: nobody waits
}

const (
	sockRequest = iota
	sockControl
	// sockRebind: a new control socket on the same endpoint, so that the
	// worker makes a new control connection; the next HELLO is left
	// unanswered.
	sockRebind
)

// newFrontEnd binds the endpoints of ep; an empty one gets a free TCP port
// on 127.0.0.1.
func newFrontEnd(ep Endpoints, sender string) (*frontEnd, error) {
	zctx, err := zmq.NewContext()
	if err != nil {
		return nil, fmt.Errorf("conformance: ZeroMQ context: %w", err)
	}
	f := &frontEnd{
		zctx: zctx, sender: sender,
		out: make(chan outMsg, 1024), quit: make(chan struct{}), done: make(chan struct{}),
		changed: make(chan struct{}), exchanges: map[string]*exchange{}, forgotten: map[string]bool{},
		nextID: uint64(time.Now().UnixMilli()) * 1000,
	}
	ready := make(chan error, 1)
	go f.run(ep, ready)
	if err := <-ready; err != nil {
		<-f.done
		_ = zctx.Term()
		return nil, err
	}
	return f, nil
}

func bindFree(s *zmq.Socket, ep string) (string, error) {
	if ep == "" {
		ep = "tcp://127.0.0.1:*"
	}
	if err := s.Bind(ep); err != nil {
		return "", fmt.Errorf("binding %s: %w", ep, err)
	}
	return s.GetLastEndpoint()
}

func (f *frontEnd) run(want Endpoints, ready chan<- error) {
	defer close(f.done)
	var socks []*zmq.Socket
	defer func() {
		for _, s := range socks {
			_ = s.Close()
		}
	}()
	mk := func(t zmq.Type) *zmq.Socket {
		s, err := f.zctx.NewSocket(t)
		if err != nil {
			return nil
		}
		_ = s.SetLinger(0)
		socks = append(socks, s)
		return s
	}
	push, sub, router := mk(zmq.PUSH), mk(zmq.SUB), mk(zmq.ROUTER)
	if push == nil || sub == nil || router == nil {
		ready <- errors.New("conformance: cannot create sockets")
		return
	}
	err := sub.SetSubscribe(f.sender + " ")
	if err == nil {
		err = routerOptions(router)
	}
	if err == nil {
		f.ep.Requests, err = bindFree(push, want.Requests)
	}
	if err == nil {
		f.ep.Replies, err = bindFree(sub, want.Replies)
	}
	if err == nil {
		f.ep.Control, err = bindFree(router, want.Control)
	}
	if err != nil {
		ready <- fmt.Errorf("conformance: %w", err)
		return
	}
	ready <- nil

	poller := zmq.NewPoller()
	poller.Add(sub, zmq.POLLIN)
	poller.Add(router, zmq.POLLIN)
	rebind := func() error {
		_ = poller.RemoveBySocket(router)
		_ = router.Close()
		router = mk(zmq.ROUTER)
		if router == nil {
			return errors.New("conformance: cannot create the control socket again")
		}
		poller.Add(router, zmq.POLLIN)
		if err := routerOptions(router); err != nil {
			return err
		}
		// The port the old socket listened on may be busy a moment.
		for until := time.Now().Add(2 * time.Second); ; {
			err := router.Bind(f.ep.Control)
			if err == nil {
				f.withhold = true
				return nil
			}
			if time.Now().After(until) {
				return fmt.Errorf("conformance: binding %s again: %w", f.ep.Control, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	var waiting []outMsg // requests waiting for a peer
	last := time.Now()
	for {
		if now := time.Now(); now.Sub(last) > ownerStall {
			f.mu.Lock()
			f.stalls = append(f.stalls, stall{at: now, d: now.Sub(last)})
			f.mu.Unlock()
		}
		last = time.Now()
		select {
		case <-f.quit:
			for _, m := range waiting {
				m.reply(errors.New("conformance: stopped"))
			}
			return
		default:
		}
		for more := true; more; {
			select {
			case m := <-f.out:
				switch m.socket {
				case sockControl:
					m.reply(sendControl(router, m.worker, m.payload))
				case sockRebind:
					m.reply(rebind())
				default:
					waiting = append(waiting, m)
				}
			default:
				more = false
			}
		}
		waiting = f.sendWaiting(push, waiting)
		if _, err := poller.Poll(5 * time.Millisecond); err != nil && !errors.Is(err, zmq.Errno(4)) {
			continue
		}
		f.readReplies(sub)
		f.readControl(router)
	}
}

type stall struct {
	at time.Time
	d  time.Duration
}

// ownerStall is a delay of the owner's loop worth recording: well beyond
// its poll.
const ownerStall = 50 * time.Millisecond

// stalledSince sums the owner's delays after t; under f.mu.
func (f *frontEnd) stalledSince(t time.Time) time.Duration {
	var d time.Duration
	for _, s := range f.stalls {
		if s.at.After(t) {
			d += s.d
		}
	}
	return d
}

func (m outMsg) reply(err error) {
	if m.result != nil {
		m.result <- err
	}
}

// routerOptions sets the control socket up as a front end does.
func routerOptions(router *zmq.Socket) error {
	if err := router.SetRouterMandatory(1); err != nil {
		return err
	}
	return router.SetRouterHandover(true)
}

func sendControl(router *zmq.Socket, worker string, payload []byte) error {
	if _, err := router.Send(worker, zmq.SNDMORE|zmq.DONTWAIT); err != nil {
		return fmt.Errorf("routing to worker %q: %w", worker, err)
	}
	_, err := router.SendBytes(payload, zmq.DONTWAIT)
	return err
}

// sendWaiting sends the requests that can go now; PUSH refuses (EAGAIN)
// while no worker is connected.
func (f *frontEnd) sendWaiting(push *zmq.Socket, waiting []outMsg) []outMsg {
	keep := waiting[:0]
	for _, m := range waiting {
		_, err := push.SendBytes(m.payload, zmq.DONTWAIT)
		switch {
		case err == nil:
			m.reply(nil)
		case zmq.AsErrno(err) == zmq.Errno(11) && time.Now().Before(m.deadline): // EAGAIN
			keep = append(keep, m)
		default:
			m.reply(fmt.Errorf("sending request: %w (no worker connected?)", err))
		}
	}
	return keep
}

func (f *frontEnd) readReplies(sub *zmq.Socket) {
	for {
		msg, err := sub.RecvBytes(zmq.DONTWAIT)
		if err != nil {
			return
		}
		f.onReply(msg)
	}
}

func (f *frontEnd) readControl(router *zmq.Socket) {
	for {
		parts, err := router.RecvMessageBytes(zmq.DONTWAIT)
		if err != nil {
			return
		}
		if len(parts) < 2 {
			continue
		}
		ev := ctlEvent{at: time.Now(), worker: string(parts[0]), payload: parts[1]}
		ev.msg, ev.err = zmqx.Parse(ev.payload)
		if ev.msg.Verb == zmqx.Hello && ev.err == nil {
			if f.withhold {
				f.withhold = false // the welcome case answers this one
			} else {
				// As a front end does: answered on the connection that
				// said it, before anything else (docs/zmqx.md section 6).
				_ = sendControl(router, ev.worker, zmqx.AppendWelcome(nil))
			}
		}
		f.mu.Lock()
		f.ctl = append(f.ctl, ev)
		f.notifyLocked()
		f.mu.Unlock()
	}
}

func (f *frontEnd) onReply(msg []byte) {
	sender, ids, body, err := mongrel2.ParseReply(msg)
	f.mu.Lock()
	defer f.mu.Unlock()
	defer f.notifyLocked()
	if err != nil {
		f.stray = append(f.stray, fmt.Sprintf("malformed reply frame (%v): %.80q", err, msg))
		return
	}
	if string(sender) != f.sender {
		f.stray = append(f.stray, fmt.Sprintf("reply for sender %q, not %q", sender, f.sender))
		return
	}
	for id, rest := mongrel2.NextID(ids); id != nil; id, rest = mongrel2.NextID(rest) {
		x := f.exchanges[string(id)]
		if x == nil {
			if f.forgotten[string(id)] {
				continue // a request the kit gave up on
			}
			f.stray = append(f.stray, fmt.Sprintf("reply for connection %s, which the kit never sent or already disconnected", id))
			continue
		}
		x.onFrame(body)
		if x.autoGrant && len(body) > 0 {
			x.granted += int64(len(body))
			f.queueControlLocked(x.workerHint(f), creditPayload(x.id, int64(len(body))))
		}
	}
}

func (x *exchange) onFrame(body []byte) {
	n := int64(len(body))
	if len(body) == 0 {
		x.closed = true
		x.complete = true
		return
	}
	if x.window > 0 && x.violation == "" {
		if o := x.outstanding(); o > 0 && o+n > x.window {
			x.violation = fmt.Sprintf("a reply frame of %d bytes with %d outstanding exceeds the window of %d bytes", n, o, x.window)
		}
	}
	x.frames = append(x.frames, len(body))
	x.reply = append(x.reply, body...)
	x.complete, x.parseErr = responseComplete(x.reply)
}

// workerHint is the worker that acknowledged x, "" if none yet.
func (x *exchange) workerHint(f *frontEnd) string {
	for _, ev := range f.ctl {
		if ev.msg.Verb == zmqx.Ack && hasID(ev.msg.IDs, x.id) {
			return ev.worker
		}
	}
	return ""
}

func hasID(args []byte, id string) bool {
	for a, rest := zmqx.NextID(args); a != nil; a, rest = zmqx.NextID(rest) {
		if string(a) == id {
			return true
		}
	}
	return false
}

// responseComplete reports whether b holds a whole HTTP/1.x response, and
// why it is malformed if it is.
func responseComplete(b []byte) (bool, error) {
	br := bufio.NewReader(bytes.NewReader(b))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return false, nil
		}
		return false, err
	}
	defer resp.Body.Close()
	if resp.ContentLength < 0 && len(resp.TransferEncoding) == 0 &&
		resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusNotModified {
		return false, nil // delimited by close: complete at the empty frame
	}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return false, nil
		}
		return false, err
	}
	if br.Buffered() > 0 {
		return true, fmt.Errorf("%d bytes after the end of the response", br.Buffered())
	}
	return true, nil
}

func (f *frontEnd) notifyLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *frontEnd) close() {
	close(f.quit)
	<-f.done
	_ = f.zctx.Term()
}

// await waits until cond (called with f.mu held) is true, or d passes.
func (f *frontEnd) await(ctx context.Context, d time.Duration, cond func() bool) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		f.mu.Lock()
		ok := cond()
		ch := f.changed
		f.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-ch:
		case <-t.C:
			f.mu.Lock()
			defer f.mu.Unlock()
			return cond()
		case <-ctx.Done():
			return false
		}
	}
}

// holds watches for d that cond (called with f.mu held) stays false; it
// reports false as soon as cond is true.
func (f *frontEnd) holds(ctx context.Context, d time.Duration, cond func() bool) bool {
	return !f.await(ctx, d, cond)
}

// newID returns a connection id never used before.
func (f *frontEnd) newID() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nextID++
	return strconv.FormatUint(f.nextID, 10)
}

// send sends a request, waiting up to d for a worker to connect.
func (f *frontEnd) send(r requestSpec, d time.Duration) (*exchange, error) {
	x := &exchange{id: f.newID(), window: r.window, granted: r.window, sentAt: time.Now()}
	f.mu.Lock()
	f.exchanges[x.id] = x
	f.mu.Unlock()
	return x, f.sendFrame(appendRequest(nil, f.sender, x.id, r), d)
}

func (f *frontEnd) sendFrame(frame []byte, d time.Duration) error {
	res := make(chan error, 1)
	f.out <- outMsg{socket: sockRequest, payload: frame, deadline: time.Now().Add(d), result: res}
	return <-res
}

// control sends one message to a worker, waiting for the outcome.
func (f *frontEnd) control(worker string, payload []byte) error {
	res := make(chan error, 1)
	f.out <- outMsg{socket: sockControl, worker: worker, payload: payload, result: res}
	return <-res
}

// rebindControl replaces the control socket with a new one on the same
// endpoint: the worker's control connection ends, it dials again, and its
// next HELLO is left unanswered.
func (f *frontEnd) rebindControl() error {
	res := make(chan error, 1)
	f.out <- outMsg{socket: sockRebind, result: res}
	return <-res
}

// queueControlLocked sends without waiting (the owner may be the caller).
func (f *frontEnd) queueControlLocked(worker string, payload []byte) {
	if worker == "" {
		return
	}
	select {
	case f.out <- outMsg{socket: sockControl, worker: worker, payload: payload}:
	default:
	}
}

// grant sends CREDIT for x and counts it.
func (f *frontEnd) grant(worker string, x *exchange, n int64) error {
	f.mu.Lock()
	x.granted += n
	f.mu.Unlock()
	return f.control(worker, creditPayload(x.id, n))
}

// disconnect tells the worker that x's client left, both ways a zmqx/1
// front end may (DISCONNECT when control is given, and the notice).
func (f *frontEnd) disconnect(worker string, x *exchange) {
	if worker != "" {
		_ = f.control(worker, disconnectPayload(x.id))
	}
	_ = f.sendFrame(mongrel2.AppendDisconnect(nil, f.sender, x.id), 0)
}

// forget stops tracking x: later frames for it are ignored.
func (f *frontEnd) forget(x *exchange) {
	f.mu.Lock()
	delete(f.exchanges, x.id)
	f.forgotten[x.id] = true
	f.mu.Unlock()
}
