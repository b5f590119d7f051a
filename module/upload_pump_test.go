package caddyzmq

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"testing"
	"time"
)

// pausingBody is a client body that hands out the pieces the test feeds
// it and blocks between them, like a client that pauses; cut unblocks a
// blocked Read with an error, like a read deadline in the past.
type pausingBody struct {
	pieces  chan []byte // closed: the body ends
	cut     chan struct{}
	cutOnce sync.Once
	rest    []byte
}

func newPausingBody() *pausingBody {
	return &pausingBody{pieces: make(chan []byte), cut: make(chan struct{})}
}

func (b *pausingBody) Read(p []byte) (int, error) {
	if len(b.rest) == 0 {
		select {
		case piece, ok := <-b.pieces:
			if !ok {
				return 0, io.EOF
			}
			b.rest = piece
		case <-b.cut:
			return 0, os.ErrDeadlineExceeded
		}
	}
	n := copy(p, b.rest)
	b.rest = b.rest[n:]
	return n, nil
}

func (b *pausingBody) interrupt() { b.cutOnce.Do(func() { close(b.cut) }) }

// smallReads returns at most n bytes per Read, like a fast client's body
// over TCP or HTTP/2 frames.
type smallReads struct {
	r io.Reader
	n int
}

func (s smallReads) Read(p []byte) (int, error) { return s.r.Read(p[:min(len(p), s.n)]) }

// pumpSink records what a pump sends, as the worker would get it, and
// checks that the body never runs past the credit granted.
type pumpSink struct {
	t       *testing.T
	head    int
	mu      sync.Mutex
	chunks  []int // BODY sizes, in order
	body    bytes.Buffer
	ends    []string
	granted int64 // window and grants so far
}

func (s *pumpSink) send(m ctlMsg) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m.body == nil {
		s.ends = append(s.ends, string(bytes.Fields(m.payload)[0]))
		return
	}
	data := m.body.Bytes()[s.head:m.bodyLen]
	s.body.Write(data)
	m.body.Free()
	s.chunks = append(s.chunks, len(data))
	if len(s.ends) > 0 {
		s.t.Errorf("a BODY message after %v", s.ends)
	}
	if int64(s.body.Len()) > s.granted {
		s.t.Errorf("%d bytes sent with %d granted", s.body.Len(), s.granted)
	}
}

func (s *pumpSink) grant(flow *uploadFlow, n int64) {
	s.mu.Lock()
	s.granted += n
	s.mu.Unlock()
	flow.grant(n)
}

func (s *pumpSink) sent() (int, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.body.Len(), append([]string(nil), s.ends...)
}

// waitSent polls until n body bytes were sent.
func (s *pumpSink) waitSent(t *testing.T, n int) {
	t.Helper()
	for deadline := time.Now().Add(testDeadline); ; {
		got, _ := s.sent()
		if got == n {
			return
		}
		if got > n || time.Now().After(deadline) {
			t.Fatalf("sent %d body bytes, want %d", got, n)
		}
		time.Sleep(time.Millisecond) // polling
	}
}

// pumpCase is how a test's pump is set up.
type pumpCase struct {
	window     int64
	flushAfter time.Duration
	max        int64
	interrupt  func()
}

// startPump runs a pump over body as pumpUpload does; the returned channel
// gets run's result once the watcher has returned too.
func startPump(t *testing.T, body io.Reader, pc pumpCase) (*uploadPump, *pumpSink, chan struct{}, chan error) {
	done := make(chan struct{})
	flow := newUploadFlow(0)
	sink := &pumpSink{t: t}
	p := newUploadPump(body, flow, 42, sink.send, done)
	sink.head = len(p.head)
	sink.grant(flow, pc.window)
	p.flushAfter, p.max = pc.flushAfter, pc.max
	interrupt := pc.interrupt
	if interrupt == nil {
		interrupt = func() { t.Error("a Read was interrupted") }
	}
	result := make(chan error, 1)
	go func() {
		readerDone := make(chan struct{})
		var err error
		go func() {
			defer close(readerDone)
			err = p.run()
		}()
		p.watch(readerDone, interrupt)
		result <- err
	}()
	return p, sink, done, result
}

func waitResult(t *testing.T, result chan error) error {
	t.Helper()
	select {
	case err := <-result:
		return err
	case <-time.After(testDeadline):
		t.Fatal("the pump did not end")
		return nil
	}
}

// A fast body goes out in whole messages of streamChunk bytes, without a
// flush of a part, whatever the size of its Reads.
func TestUploadPumpFastBodyInWholeMessages(t *testing.T) {
	for _, read := range []int{1 << 10, 16 << 10, 1 << 20} {
		payload := bytes.Repeat([]byte("0123456789abcdef"), (5*streamChunk+1000)/16)
		// No flush can happen: a loaded machine may pause the reader.
		_, sink, _, result := startPump(t, smallReads{bytes.NewReader(payload), read}, pumpCase{window: 64 << 20, flushAfter: time.Hour})
		if err := waitResult(t, result); err != nil {
			t.Fatalf("read %d: %v", read, err)
		}
		if !bytes.Equal(sink.body.Bytes(), payload) {
			t.Fatalf("read %d: the worker got %d bytes, not the body", read, sink.body.Len())
		}
		for i, n := range sink.chunks[:len(sink.chunks)-1] {
			if n != streamChunk {
				t.Fatalf("read %d: message %d has %d bytes, want %d", read, i, n, streamChunk)
			}
		}
		if len(sink.ends) != 1 || sink.ends[0] != "BODYEND" {
			t.Fatalf("read %d: ends %v", read, sink.ends)
		}
	}
}

// A client that sends part of a message and pauses gets it to the worker
// without sending more; what it sends after the pause, into the rest of
// the message (the pump moves it to a fresh one), follows in order, and
// the credit the worker granted is never exceeded.
func TestUploadPumpPausedClient(t *testing.T) {
	body := newPausingBody()
	const window = 192 << 10
	p, sink, _, result := startPump(t, body, pumpCase{window: window, flushAfter: time.Millisecond, interrupt: body.interrupt})
	var want []byte
	feed := func(n int, b byte) {
		piece := bytes.Repeat([]byte{b}, n)
		want = append(want, piece...)
		body.pieces <- piece
	}
	feed(64<<10, 'a')
	feed(64<<10, 'b')
	sink.waitSent(t, 128<<10) // the client pauses: it goes out anyway
	feed(10<<10, 'c')
	sink.waitSent(t, 138<<10) // into the rest of the first message
	feed(54<<10, 'd')         // fills the window: sent at once
	sink.waitSent(t, window)
	sink.grant(p.flow, 300<<10)
	feed(300<<10, 'e')
	sink.waitSent(t, window+300<<10)
	sink.grant(p.flow, 1) // credit to read the body's end
	close(body.pieces)
	if err := waitResult(t, result); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sink.body.Bytes(), want) {
		t.Fatal("the worker got the body out of order or mangled")
	}
	if len(sink.ends) != 1 || sink.ends[0] != "BODYEND" {
		t.Fatalf("ends %v", sink.ends)
	}
}

// When the exchange ends while the client is paused, the pump interrupts
// the Read it is blocked in and ends without waiting for the client, and
// without BODYEND or BODYERR (the exchange is over).
func TestUploadPumpEndsDuringStalledRead(t *testing.T) {
	body := newPausingBody()
	_, sink, done, result := startPump(t, body, pumpCase{window: 1 << 20, flushAfter: time.Millisecond, interrupt: body.interrupt})
	body.pieces <- make([]byte, 100<<10)
	sink.waitSent(t, 100<<10)
	close(done)
	if err := waitResult(t, result); !errors.Is(err, errPumpStopped) {
		t.Fatalf("run returned %v, want errPumpStopped", err)
	}
	if _, ends := sink.sent(); len(ends) != 0 {
		t.Fatalf("ends %v after the exchange was over", ends)
	}
}

// When the exchange ends while the pump waits for credit, nothing is read
// and nothing interrupted.
func TestUploadPumpEndsWithoutCredit(t *testing.T) {
	body := newPausingBody()
	_, sink, done, result := startPump(t, body, pumpCase{window: 64 << 10, flushAfter: time.Hour})
	body.pieces <- make([]byte, 64<<10)
	sink.waitSent(t, 64<<10)
	close(done)
	if err := waitResult(t, result); !errors.Is(err, errPumpStopped) {
		t.Fatalf("run returned %v, want errPumpStopped", err)
	}
}

// A body over max_request_body stops the pump with errUploadTooLarge;
// nothing beyond the limit reaches the worker.
func TestUploadPumpTooLarge(t *testing.T) {
	const limit = 700 << 10
	payload := make([]byte, limit+1)
	_, sink, _, result := startPump(t, smallReads{bytes.NewReader(payload), 64 << 10}, pumpCase{window: 64 << 20, flushAfter: time.Hour, max: limit})
	err := waitResult(t, result)
	if n, _ := sink.sent(); n > limit {
		t.Fatalf("%d bytes sent past the limit of %d", n, limit)
	}
	if !errors.Is(err, errUploadTooLarge) {
		t.Fatalf("run returned %v, want errUploadTooLarge", err)
	}
}

// A client body that fails gets what came before the failure to the
// worker, and run returns the error (pumpUpload sends BODYERR).
func TestUploadPumpClientError(t *testing.T) {
	broken := errors.New("connection reset")
	body := io.MultiReader(bytes.NewReader(make([]byte, 100<<10)), errReader{broken})
	_, sink, _, result := startPump(t, body, pumpCase{window: 64 << 20, flushAfter: time.Hour})
	if err := waitResult(t, result); !errors.Is(err, broken) {
		t.Fatalf("run returned %v, want %v", err, broken)
	}
	if n, ends := sink.sent(); n != 100<<10 || len(ends) != 0 {
		t.Fatalf("sent %d bytes and %v", n, ends)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// interruptRead unblocks a handler's Read of a body whose client paused,
// over HTTP/1 and HTTP/2, so that the pump ends with the exchange.
func TestUploadPumpInterruptsRealRead(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		stopped := make(chan error, 1)
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if want := map[bool]int{false: 1, true: 2}[h2]; r.ProtoMajor != want {
				t.Errorf("the request came over HTTP/%d, want HTTP/%d", r.ProtoMajor, want)
			}
			done := make(chan struct{})
			sink := &pumpSink{t: t}
			p := newUploadPump(r.Body, newUploadFlow(1<<20), 7, sink.send, done)
			sink.head, sink.granted = len(p.head), 1<<20
			p.flushAfter = time.Millisecond
			readerDone := make(chan struct{})
			var err error
			go func() {
				defer close(readerDone)
				err = p.run()
			}()
			watched := make(chan struct{})
			go func() {
				defer close(watched)
				p.watch(readerDone, func() { interruptRead(w, r) })
			}()
			sink.waitSent(t, 10<<10) // the client's first bytes, then it pauses
			close(done)
			<-watched
			stopped <- err
		}))
		srv.EnableHTTP2 = h2
		srv.StartTLS()
		pr, pw := io.Pipe()
		go func() { _, _ = pw.Write(make([]byte, 10<<10)) }()
		req, _ := http.NewRequest(http.MethodPost, srv.URL, pr)
		go func() {
			if resp, err := srv.Client().Do(req); err == nil {
				resp.Body.Close()
			}
		}()
		select {
		case err := <-stopped:
			if !errors.Is(err, errPumpStopped) {
				t.Errorf("h2=%v: run returned %v, want errPumpStopped", h2, err)
			}
		case <-time.After(testDeadline):
			t.Fatalf("h2=%v: the pump waited for a paused client", h2)
		}
		pw.Close()
		srv.Close()
	}
}
