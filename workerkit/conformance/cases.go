package conformance

import (
	"bytes"
	"time"

	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

type caseDef struct {
	name    string
	control bool // needs the control channel
	run     func(*session) Result
}

// allCases, in the order they run: the Mongrel2 cases first (they also
// wait for the worker to come up), the drain last (it stops the worker).
var allCases = []caseDef{
	{"mongrel2/round-trip", false, roundTrip},
	{"mongrel2/disconnect-notice", false, disconnectNotice},
	{"zmqx/hello", true, hello},
	{"zmqx/heartbeat", true, heartbeat},
	{"zmqx/ignores-unknown", true, ignoresUnknown},
	{"zmqx/ack", true, ack},
	{"zmqx/deadline", true, deadline},
	{"zmqx/deadline-queued", true, deadlineQueued},
	{"zmqx/confirm", true, confirmStart},
	{"zmqx/credit", true, credit},
	{"zmqx/max-concurrent", true, maxConcurrent},
	{"zmqx/disconnect", true, disconnectCancels},
	{"zmqx/pause-resume", true, pauseResume},
	{"zmqx/upload", true, upload},
	{"zmqx/welcome", true, welcome},
	{"zmqx/bye", true, bye},
}

// roundTrip: a plain request (no zmqx header) gets a well-formed reply:
// this front end's sender id, exactly the request's connection id, a
// complete HTTP/1.x response.
func roundTrip(s *session) Result {
	before := s.strays()
	// The first request waits for the worker to connect.
	x, err := s.fe.send(requestSpec{method: "GET", path: s.cfg.Path}, s.cfg.WorkerWait)
	if x != nil {
		s.live = append(s.live, x)
	}
	if err != nil {
		return fail("%v", err)
	}
	if err := s.awaitDone(x); err != nil {
		return fail("%v", err)
	}
	if st := s.strayFrom(before); st != "" {
		return fail("unexpected reply frame: %s", st)
	}
	s.plainID = x.id
	s.fe.mu.Lock()
	defer s.fe.mu.Unlock()
	status, _, _ := bytes.Cut(x.reply, []byte("\r\n"))
	return pass("%q, %d bytes in %d frame(s)", status, len(x.reply), len(x.frames))
}

// disconnectNotice: Mongrel2's notice for a connection the worker never
// saw is not answered, and the worker goes on serving.
func disconnectNotice(s *session) Result {
	before := s.strays()
	ghost := s.fe.newID()
	if err := s.fe.sendFrame(appendDisconnectNotice(s.cfg.SenderID, ghost), s.cfg.Timeout); err != nil {
		return fail("%v", err)
	}
	x, err := s.send(requestSpec{method: "GET", path: s.cfg.Path})
	if err != nil {
		return fail("%v", err)
	}
	if err := s.awaitDone(x); err != nil {
		return fail("after a disconnect notice: %v", err)
	}
	// A reply to the notice would have come before the request's (one
	// socket, in order) or soon after.
	if !s.fe.holds(s.ctx, s.cfg.Quiet, func() bool { return len(s.fe.stray) > before }) {
		return fail("answered a disconnect notice: %s", s.strayFrom(before))
	}
	return pass("notice ignored, next request served")
}

// hello: the first control message is HELLO <max_concurrent>.
func hello(s *session) Result {
	s.fe.mu.Lock()
	defer s.fe.mu.Unlock()
	first := s.fe.ctl[0]
	if first.msg.Verb != zmqx.Hello {
		return fail("the first control message is %.40q, not %s", first.payload, zmqx.Hello)
	}
	if first.err != nil || first.msg.N <= 0 {
		return fail("%.60q: max_concurrent must be a positive integer", first.payload)
	}
	return pass("%s %d from %q", zmqx.Hello, first.msg.N, first.worker)
}

// heartbeat: the worker is never silent for the lease (1 s) over an
// observation of one and a half leases, and says HB.
func heartbeat(s *session) Result {
	start := time.Now()
	window := lease * 3 / 2
	s.fe.holds(s.ctx, window, func() bool { return false })
	end := time.Now()
	s.fe.mu.Lock()
	defer s.fe.mu.Unlock()
	last := start // the last message heard, or the start of the watch
	var maxGap time.Duration
	hbs := 0
	for _, ev := range s.fe.ctl {
		if ev.worker != s.worker || !ev.at.After(start) {
			continue
		}
		if ev.msg.Verb == zmqx.Heartbeat {
			hbs++
		}
		maxGap = max(maxGap, ev.at.Sub(last))
		last = ev.at
	}
	maxGap = max(maxGap, end.Sub(last))
	if hbs == 0 {
		return fail("no %s within %s", zmqx.Heartbeat, window)
	}
	// The kit's own delays may have made the worker look silent longer.
	if excuse := s.fe.stalledSince(start); maxGap > lease+excuse {
		return fail("silent for %s on the control channel (a front end declares a worker lost after %s)", maxGap.Round(time.Millisecond), lease)
	}
	return pass("%d %s in %s, longest silence %s", hbs, zmqx.Heartbeat, window, maxGap.Round(time.Millisecond))
}

// ignoresUnknown: an unknown control verb and an unknown trusted header
// change nothing (the rule that lets zmqx/1 grow).
func ignoresUnknown(s *session) Result {
	if err := s.fe.control(s.worker, []byte(unknownVerb+" 1 2 3")); err != nil {
		return fail("%v", err)
	}
	x, err := s.send(requestSpec{method: "GET", path: s.cfg.Path, window: 4 << 20,
		extra: [][2]string{{unknownHeader, "1"}}})
	if err != nil {
		return fail("%v", err)
	}
	if err := s.awaitDone(x); err != nil {
		return fail("after an unknown verb, a request with an unknown header: %v", err)
	}
	if !s.awaitAcked(x) {
		return fail("a request with an unknown %s header was served but not acknowledged", unknownHeader)
	}
	return pass("unknown verb and header ignored")
}

// ack: every windowed request is acknowledged; a request without
// ZMQX_WINDOW is not.
func ack(s *session) Result {
	var xs []*exchange
	for range 3 {
		x, err := s.send(requestSpec{method: "GET", path: s.cfg.Path, window: 4 << 20})
		if err != nil {
			return fail("%v", err)
		}
		xs = append(xs, x)
	}
	for _, x := range xs {
		if err := s.awaitDone(x); err != nil {
			return fail("%v", err)
		}
		if !s.awaitAcked(x) {
			return fail("request %s (with %s) answered but never acknowledged", x.id, zmqx.HeaderWindow)
		}
	}
	if s.plainID != "" {
		s.fe.mu.Lock()
		defer s.fe.mu.Unlock()
		for _, ev := range s.fe.ctl {
			if ev.msg.Verb == zmqx.Ack && hasID(ev.msg.IDs, s.plainID) {
				return fail("acknowledged request %s, which had no %s", s.plainID, zmqx.HeaderWindow)
			}
		}
	}
	return pass("%d windowed requests acknowledged, the plain one not", len(xs))
}

// deadline: a request past its ZMQX_DEADLINE is not run: no ACK, no reply.
// A request sent after it is served, so the worker has seen the first.
func deadline(s *session) Result {
	late, err := s.send(requestSpec{method: "GET", path: s.cfg.Path, window: 4 << 20,
		deadline: time.Now().Add(-2 * time.Second)})
	if err != nil {
		return fail("%v", err)
	}
	probe, err := s.send(requestSpec{method: "GET", path: s.cfg.Path, window: 4 << 20,
		deadline: time.Now().Add(s.cfg.Timeout)})
	if err != nil {
		return fail("%v", err)
	}
	if err := s.awaitDone(probe); err != nil {
		return fail("request with a future deadline: %v", err)
	}
	if !s.fe.holds(s.ctx, s.cfg.Quiet, func() bool { return s.acked(late) || len(late.frames) > 0 }) {
		s.fe.mu.Lock()
		defer s.fe.mu.Unlock()
		return fail("ran request %s although its deadline had passed (acknowledged: %v, reply frames: %d)",
			late.id, s.acked(late), len(late.frames))
	}
	return pass("late request dropped, the next one served")
}

// deadlineQueued: a request that waits for a handler slot past its
// deadline is not run when the slot frees (the worker checks the deadline
// when it would start the request, not only when it arrives).
func deadlineQueued(s *session) Result {
	n := s.maxConc
	if n <= 0 || n > maxTestedConcurrency {
		return skip("needs max_concurrent between 1 and %d (got %d)", maxTestedConcurrency, n)
	}
	held, res, ok := s.saturate(n, n)
	if !ok {
		return res
	}
	by := time.Now().Add(s.cfg.Quiet)
	late, err := s.send(requestSpec{method: "GET", path: s.cfg.Path, window: 4 << 20, deadline: by})
	if err != nil {
		return fail("%v", err)
	}
	// Every slot stays busy until the deadline has passed: the request can
	// never start in time.
	s.fe.holds(s.ctx, time.Until(by)+s.cfg.Quiet, func() bool { return false })
	if s.fe.await(s.ctx, 0, func() bool { return s.acked(late) }) {
		return fail("started request %s while every slot was busy (max_concurrent %d)", late.id, n)
	}
	for _, x := range held {
		s.fe.disconnect(s.worker, x)
	}
	probe, err := s.send(requestSpec{method: "GET", path: s.cfg.Path, window: 4 << 20})
	if err != nil {
		return fail("%v", err)
	}
	if err := s.awaitDone(probe); err != nil {
		return fail("after the held requests were disconnected: %v", err)
	}
	if !s.fe.holds(s.ctx, s.cfg.Quiet, func() bool { return s.acked(late) || len(late.frames) > 0 }) {
		return fail("ran request %s once a slot freed, after its deadline had passed", late.id)
	}
	return pass("the request that waited past its deadline was dropped")
}

// confirmStart: a request marked ZMQX_CONFIRM (a POST with a deadline) is
// acknowledged but not run until its ACK is answered with CONFIRM; one
// whose ACK is answered with DISCONNECT instead is never run.
func confirmStart(s *session) Result {
	spec := requestSpec{method: "POST", path: s.cfg.Path, body: []byte("once"), window: 4 << 20,
		deadline: time.Now().Add(s.cfg.Timeout), confirm: true}
	x, err := s.send(spec)
	if err != nil {
		return fail("%v", err)
	}
	if !s.awaitAcked(x) {
		return fail("request %s never acknowledged", x.id)
	}
	if !s.fe.holds(s.ctx, s.cfg.Quiet, func() bool { return len(x.frames) > 0 }) {
		return fail("ran request %s before its ACK was confirmed (answered without CONFIRM)", x.id)
	}
	if err := s.fe.control(s.worker, zmqx.AppendID(zmqx.AppendConfirm(nil), x.id)); err != nil {
		return fail("%v", err)
	}
	if err := s.awaitDone(x); err != nil {
		return fail("after CONFIRM: %v", err)
	}
	spec.deadline = time.Now().Add(s.cfg.Timeout)
	y, err := s.send(spec)
	if err != nil {
		return fail("%v", err)
	}
	if !s.awaitAcked(y) {
		return fail("request %s never acknowledged", y.id)
	}
	if err := s.fe.control(s.worker, disconnectPayload(y.id)); err != nil {
		return fail("%v", err)
	}
	if !s.fe.holds(s.ctx, s.cfg.Quiet, func() bool { return len(y.frames) > 0 }) {
		return fail("ran request %s although its ACK was answered with DISCONNECT", y.id)
	}
	return pass("started only after CONFIRM; never after DISCONNECT")
}

// credit: the reply of a windowed request stays within its credit and
// resumes when CREDIT comes.
func credit(s *session) Result {
	// The size of the response decides the window: a quarter of it.
	probe, err := s.send(requestSpec{method: "GET", path: s.cfg.BigPath})
	if err != nil {
		return fail("%v", err)
	}
	if err := s.awaitDone(probe); err != nil {
		return fail("%v", err)
	}
	s.fe.mu.Lock()
	size := int64(len(probe.reply))
	s.fe.mu.Unlock()
	w := max(1, size/4)
	x, err := s.send(requestSpec{method: "GET", path: s.cfg.BigPath, window: w})
	if err != nil {
		return fail("%v", err)
	}
	if !s.awaitAcked(x) {
		return fail("windowed request %s never acknowledged", x.id)
	}
	if !s.fe.await(s.ctx, s.cfg.Timeout, func() bool { return len(x.frames) > 0 || x.complete }) {
		return fail("no reply frame within %s", s.cfg.Timeout)
	}
	// Wait for the worker to stop: a quiet spell with the response
	// incomplete. A worker that ignores the credit breaks the rule first.
	until := time.Now().Add(s.cfg.Timeout)
	for {
		s.fe.mu.Lock()
		k, done, v := len(x.frames), x.complete, x.violation
		s.fe.mu.Unlock()
		if v != "" {
			return fail("window %d: %s", w, v)
		}
		if done {
			if k == 1 {
				return pass("window %d: the whole %d-byte response came in one frame (allowed with nothing outstanding; credit not exercised)", w, size)
			}
			return pass("window %d: complete in %d frames within the window", w, k)
		}
		if s.fe.holds(s.ctx, s.cfg.Quiet, func() bool { return len(x.frames) != k || x.complete }) {
			break // stalled, waiting for credit
		}
		if time.Now().After(until) {
			return fail("the reply never paused for credit within %s", s.cfg.Timeout)
		}
	}
	s.fe.mu.Lock()
	owed := x.outstanding()
	stalledAt := len(x.frames)
	x.autoGrant = true
	s.fe.mu.Unlock()
	if err := s.fe.grant(s.worker, x, owed); err != nil {
		return fail("%v", err)
	}
	if err := s.awaitDone(x); err != nil {
		return fail("after CREDIT: %v", err)
	}
	s.fe.mu.Lock()
	defer s.fe.mu.Unlock()
	if x.violation != "" {
		return fail("window %d: %s", w, x.violation)
	}
	return pass("window %d: paused after %d frame(s) with %d bytes outstanding, resumed by CREDIT, %d frames", w, stalledAt, owed, len(x.frames))
}

// saturate sends n held requests and waits until want of them are
// acknowledged.
func (s *session) saturate(n, want int) ([]*exchange, Result, bool) {
	xs := make([]*exchange, 0, n)
	for range n {
		x, err := s.send(s.holdSpec())
		if err != nil {
			return nil, fail("%v", err), false
		}
		xs = append(xs, x)
	}
	if !s.fe.await(s.ctx, s.cfg.Timeout, func() bool { return s.countAcked(xs) >= want }) {
		s.fe.mu.Lock()
		defer s.fe.mu.Unlock()
		done := 0
		for _, x := range xs {
			if x.complete {
				done++
			}
		}
		if done > 0 {
			return nil, fail("%d of %d held requests completed: the worker did not wait for credit (or HoldPath answers)", done, n), false
		}
		return nil, fail("only %d of %d requests acknowledged within %s (max_concurrent %d)", s.countAcked(xs), want, s.cfg.Timeout, s.maxConc), false
	}
	return xs, Result{}, true
}

const maxTestedConcurrency = 512

// maxConcurrent: with every slot held, the worker starts no more than
// max_concurrent requests; the others wait (or are handed back).
func maxConcurrent(s *session) Result {
	n := s.maxConc
	if n <= 0 {
		return fail("no valid %s, so no max_concurrent to check", zmqx.Hello)
	}
	if n > maxTestedConcurrency {
		return skip("max_concurrent %d is more than the kit holds (%d)", n, maxTestedConcurrency)
	}
	xs, res, ok := s.saturate(n+2, n)
	if !ok {
		return res
	}
	held := s.fe.holds(s.ctx, s.cfg.Quiet, func() bool { return s.inflight(xs) > n })
	s.fe.mu.Lock()
	defer s.fe.mu.Unlock()
	if !held {
		return fail("%d requests running at once, max_concurrent is %d", s.inflight(xs), n)
	}
	nacked := 0
	for _, x := range xs {
		if s.nacked(x) {
			nacked++
		}
	}
	return pass("%d running, %d more waiting (%d handed back)", s.inflight(xs), len(xs)-s.inflight(xs)-nacked, nacked)
}

// disconnectCancels: DISCONNECT, and the Mongrel2 notice, cancel a running
// request: its slot goes to a waiting one.
func disconnectCancels(s *session) Result {
	n := s.maxConc
	if n <= 0 || n > maxTestedConcurrency {
		return skip("needs max_concurrent between 1 and %d (got %d)", maxTestedConcurrency, n)
	}
	// One request waits: the worker reads nothing else from its request
	// socket until it has a slot for it, so the notice comes later.
	xs, res, ok := s.saturate(n+1, n)
	if !ok {
		return res
	}
	var running []*exchange
	s.fe.mu.Lock()
	for _, x := range xs {
		if s.acked(x) {
			running = append(running, x)
		}
	}
	s.fe.mu.Unlock()
	if err := s.fe.control(s.worker, disconnectPayload(running[0].id)); err != nil {
		return fail("%v", err)
	}
	if !s.fe.await(s.ctx, s.cfg.Timeout, func() bool { return s.countAcked(xs) >= n+1 }) {
		return fail("after %s %s, the waiting request did not start within %s: the request was not cancelled", zmqx.Disconnect, running[0].id, s.cfg.Timeout)
	}
	if len(running) < 2 {
		return pass("%s freed a slot (max_concurrent 1: the notice is not tried)", zmqx.Disconnect)
	}
	if err := s.fe.sendFrame(appendDisconnectNotice(s.cfg.SenderID, running[1].id), s.cfg.Timeout); err != nil {
		return fail("%v", err)
	}
	next, err := s.send(s.holdSpec())
	if err != nil {
		return fail("%v", err)
	}
	if !s.awaitAcked(next) {
		return fail("after the Mongrel2 disconnect notice for %s, a new request did not start within %s: the request was not cancelled", running[1].id, s.cfg.Timeout)
	}
	// The cancelled ones send nothing more, even with credit.
	_ = s.fe.grant(s.worker, running[0], 1<<20)
	if !s.fe.holds(s.ctx, s.cfg.Quiet, func() bool { return running[0].complete }) {
		return fail("request %s completed after %s", running[0].id, zmqx.Disconnect)
	}
	return pass("%s and the notice each freed a slot", zmqx.Disconnect)
}

// pauseResume: after PAUSE the worker starts nothing new and hands requests
// back (NACK); after RESUME it serves again.
func pauseResume(s *session) Result {
	if err := s.fe.control(s.worker, zmqx.AppendPause(nil)); err != nil {
		return fail("%v", err)
	}
	defer func() { _ = s.fe.control(s.worker, zmqx.AppendResume(nil)) }()
	spec := requestSpec{method: "GET", path: s.cfg.Path, window: 4 << 20}
	// The PAUSE and the requests travel on different sockets: requests
	// may still be served until the worker has read it.
	until := time.Now().Add(s.cfg.Timeout)
	paused := false
	for !paused && time.Now().Before(until) {
		x, err := s.send(spec)
		if err != nil {
			return fail("%v", err)
		}
		if !s.fe.await(s.ctx, s.cfg.Timeout, func() bool { return s.nacked(x) || x.complete }) {
			return fail("request %s sent after %s: neither handed back (%s) nor answered within %s", x.id, zmqx.Pause, zmqx.Nack, s.cfg.Timeout)
		}
		s.fe.mu.Lock()
		paused = s.nacked(x)
		s.fe.mu.Unlock()
	}
	if !paused {
		return fail("the worker kept serving for %s after %s", s.cfg.Timeout, zmqx.Pause)
	}
	for range 2 {
		x, err := s.send(spec)
		if err != nil {
			return fail("%v", err)
		}
		if !s.fe.await(s.ctx, s.cfg.Timeout, func() bool { return s.nacked(x) || s.acked(x) || len(x.frames) > 0 }) {
			return fail("paused: request %s neither handed back nor answered within %s", x.id, s.cfg.Timeout)
		}
		s.fe.mu.Lock()
		started := s.acked(x) || len(x.frames) > 0
		s.fe.mu.Unlock()
		if started {
			return fail("paused: started request %s", x.id)
		}
	}
	if err := s.fe.control(s.worker, zmqx.AppendResume(nil)); err != nil {
		return fail("%v", err)
	}
	until = time.Now().Add(s.cfg.Timeout)
	for time.Now().Before(until) {
		x, err := s.send(spec)
		if err != nil {
			return fail("%v", err)
		}
		if !s.fe.await(s.ctx, s.cfg.Timeout, func() bool { return s.nacked(x) || x.complete }) {
			return fail("request %s after %s: neither handed back nor answered within %s", x.id, zmqx.Resume, s.cfg.Timeout)
		}
		s.fe.mu.Lock()
		served := x.complete && !s.nacked(x)
		s.fe.mu.Unlock()
		if served {
			if !s.awaitAcked(x) {
				return fail("request %s served after %s but not acknowledged", x.id, zmqx.Resume)
			}
			return pass("handed requests back while paused, served again after %s", zmqx.Resume)
		}
	}
	return fail("still handing requests back %s after %s", s.cfg.Timeout, zmqx.Resume)
}

// welcome: on a new control connection the worker takes no request (and
// sends no ACK) before the front end has answered its HELLO with WELCOME:
// a front end may not read a new connection (with CURVE, a second one
// under the worker's id while the old one lingers), and an ACK lost there
// gets the request sent again. Once WELCOME comes, it serves the request.
func welcome(s *session) Result {
	since := time.Now()
	if err := s.fe.rebindControl(); err != nil {
		return fail("%v", err)
	}
	if !s.fe.await(s.ctx, s.cfg.Timeout, func() bool { return s.helloSince(since) }) {
		return fail("no %s on a new control connection within %s", zmqx.Hello, s.cfg.Timeout)
	}
	x, err := s.send(requestSpec{method: "GET", path: s.cfg.Path, window: 4 << 20, deadline: time.Now().Add(s.cfg.Timeout)})
	if err != nil {
		return fail("%v", err)
	}
	// Well within the wait after which a worker may take the front end for
	// one that predates WELCOME.
	quiet := min(s.cfg.Quiet, zmqx.WelcomeWait/2)
	if !s.fe.holds(s.ctx, quiet, func() bool { return s.acked(x) || len(x.frames) > 0 }) {
		return fail("started request %s on a control connection the front end had not answered (no %s yet): its %s could be lost, and the request run twice",
			x.id, zmqx.Welcome, zmqx.Ack)
	}
	if err := s.fe.control(s.worker, zmqx.AppendWelcome(nil)); err != nil {
		return fail("%v", err)
	}
	if !s.awaitAcked(x) {
		return fail("request %s not acknowledged within %s of %s", x.id, s.cfg.Timeout, zmqx.Welcome)
	}
	if err := s.awaitDone(x); err != nil {
		return fail("%v", err)
	}
	return pass("took no request before %s, served it after", zmqx.Welcome)
}

// upload: a streamed body (BODY/BODYEND under UCREDIT) reaches the worker,
// which grants credit as its handler reads and never more than it got.
func upload(s *session) Result {
	const window = 64 << 10
	const size = 4 * window
	x, err := s.send(requestSpec{method: "POST", path: s.cfg.UploadPath, window: window, stream: size})
	if err != nil {
		return fail("%v", err)
	}
	if !s.awaitAcked(x) {
		return fail("streamed upload %s never acknowledged (the body is sent only after the ACK)", x.id)
	}
	granted := func() int64 { // under fe.mu
		var g int64
		for _, ev := range s.fe.ctl {
			if ev.msg.Verb == zmqx.UploadCredit && ev.err == nil && ev.worker == s.worker && string(ev.msg.ID) == x.id {
				g += ev.msg.N
			}
		}
		return g
	}
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 1024) // 16 KiB
	var sent int64
	for sent < size {
		s.fe.mu.Lock()
		room := window + granted() - sent
		done := x.complete
		s.fe.mu.Unlock()
		if done {
			break // answered without reading it all
		}
		if room <= 0 {
			if !s.fe.await(s.ctx, s.cfg.Timeout, func() bool { return window+granted()-sent > 0 || x.complete }) {
				return fail("sent %d of %d bytes; no %s for %s (the handler reads the body?)", sent, size, zmqx.UploadCredit, s.cfg.Timeout)
			}
			continue
		}
		n := min(room, int64(len(chunk)), size-sent)
		if err := s.fe.control(s.worker, bodyPayload(x.id, chunk[:n])); err != nil {
			return fail("%v", err)
		}
		sent += n
	}
	if sent == size {
		if err := s.fe.control(s.worker, bodyEndPayload(x.id)); err != nil {
			return fail("%v", err)
		}
	}
	if err := s.awaitDone(x); err != nil {
		return fail("after the upload: %v", err)
	}
	s.fe.mu.Lock()
	defer s.fe.mu.Unlock()
	if g := granted(); g > sent {
		return fail("granted %d bytes of upload credit for %d bytes sent", g, sent)
	}
	status, _, _ := bytes.Cut(x.reply, []byte("\r\n"))
	if sent < size {
		return pass("answered %q after %d of %d bytes (the handler did not read it all)", status, sent, size)
	}
	return pass("%d bytes under a %d-byte window, %d granted back, answered %q", size, window, granted(), status)
}

// bye: a worker told to stop says BYE.
func bye(s *session) Result {
	if s.cfg.Stop == nil {
		return skip("the kit did not start the worker, so it cannot stop it")
	}
	go s.cfg.Stop()
	if !s.fe.await(s.ctx, s.cfg.Timeout, func() bool {
		for _, ev := range s.fe.ctl {
			if ev.worker == s.worker && ev.msg.Verb == zmqx.Bye {
				return true
			}
		}
		return false
	}) {
		return fail("no %s within %s of being told to stop", zmqx.Bye, s.cfg.Timeout)
	}
	return pass("%s on drain", zmqx.Bye)
}
