package workerkit

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/zmqbridge/caddy-zmq/internal/mongrel2"
)

// uploader plays the sending side of a streamed upload as the module does:
// BODY messages of at most chunk bytes, never more than its credit (the
// window to start with, plus every UCREDIT).
type uploader struct {
	f        *testFE
	id, conn string
	chunk    int
	credit   int64
	granted  int64   // UCREDIT received, in all
	grants   []int64 // each UCREDIT
	sent     int64
}

func newUploader(f *testFE, id, conn string, window int64, chunk int) *uploader {
	return &uploader{f: f, id: id, conn: conn, chunk: chunk, credit: window}
}

// apply takes a control message into account; true if it was a UCREDIT for
// this upload.
func (u *uploader) apply(m ctlMsg) bool {
	rest, ok := strings.CutPrefix(m.body, "UCREDIT "+u.conn+" ")
	if !ok {
		if strings.HasPrefix(m.body, "UCREDIT ") {
			u.f.t.Errorf("UCREDIT for another connection: %q", m.body)
		}
		return false
	}
	n, err := strconv.ParseInt(rest, 10, 64)
	if err != nil || n <= 0 {
		u.f.t.Fatalf("malformed UCREDIT %q", m.body)
	}
	u.credit += n
	u.granted += n
	u.grants = append(u.grants, n)
	return true
}

// poll takes the control messages that have arrived, without waiting.
func (u *uploader) poll() {
	for {
		parts, err := u.f.ctl.RecvMessage(zmq.DONTWAIT)
		if err != nil {
			return
		}
		if len(parts) == 2 {
			m := ctlMsg{id: parts[0], body: parts[1], at: time.Now()}
			u.f.ctlLog = append(u.f.ctlLog, m)
			u.apply(m)
		}
	}
}

// waitCredit waits for the next UCREDIT of this upload.
func (u *uploader) waitCredit() {
	u.f.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		m, err := u.f.ctlRecv(time.Until(deadline))
		if err != nil {
			u.f.t.Fatalf("conn %s: no UCREDIT after %d bytes sent, %d granted: %v", u.conn, u.sent, u.granted, err)
		}
		if u.apply(m) {
			return
		}
	}
}

// waitDrained waits until everything sent has been granted back: the
// handler has read it all and waits for more (it grants what it owes
// before it waits).
func (u *uploader) waitDrained() {
	u.f.t.Helper()
	u.poll()
	for u.granted < u.sent {
		u.waitCredit()
	}
	if u.granted != u.sent {
		u.f.t.Fatalf("granted %d bytes, sent only %d", u.granted, u.sent)
	}
}

// send sends p, waiting for credit whenever it has none.
func (u *uploader) send(p []byte) {
	u.f.t.Helper()
	for len(p) > 0 {
		u.poll()
		if u.credit == 0 {
			u.waitCredit()
			continue
		}
		n := int(min(int64(u.chunk), u.credit, int64(len(p))))
		u.sendRaw(p[:n])
		u.credit -= int64(n)
		u.sent += int64(n)
		p = p[n:]
	}
}

// sendRaw sends one BODY message, credit or not.
func (u *uploader) sendRaw(p []byte) {
	u.f.t.Helper()
	msg := make([]byte, 0, len("BODY ")+len(u.conn)+1+len(p))
	msg = append(msg, "BODY "...)
	msg = append(msg, u.conn...)
	msg = append(msg, ' ')
	msg = append(msg, p...)
	if _, err := u.f.ctl.SendMessage(u.id, msg); err != nil {
		u.f.t.Fatalf("BODY to %s: %v", u.id, err)
	}
}

func (u *uploader) end() { u.f.ctlSend(u.id, "BODYEND "+u.conn) }

// uploadHooks records what the test hooks of streamed uploads see. Install
// it before the worker starts; it is removed after the worker has stopped.
type uploadHooks struct {
	maxBuffered atomic.Int64
	granted     atomic.Int64
	delivered   chan int64  // buffered after each BODY
	dropped     chan string // conn of each dropped BODY
	closed      chan string // conn of each upload closed at the end of its request
}

func installUploadHooks(t *testing.T) *uploadHooks {
	h := &uploadHooks{delivered: make(chan int64, 4096), dropped: make(chan string, 256), closed: make(chan string, 64)}
	testHookUploadDelivered = func(conn string, buffered int64) {
		for m := h.maxBuffered.Load(); buffered > m && !h.maxBuffered.CompareAndSwap(m, buffered); m = h.maxBuffered.Load() {
		}
		select {
		case h.delivered <- buffered:
		default:
		}
	}
	testHookUploadGrant = func(conn string, n int64) { h.granted.Add(n) }
	testHookUploadDropped = func(conn string) {
		select {
		case h.dropped <- conn:
		default:
		}
	}
	testHookUploadClosed = func(conn string) {
		select {
		case h.closed <- conn:
		default:
		}
	}
	t.Cleanup(func() {
		testHookUploadDelivered, testHookUploadGrant, testHookUploadDropped, testHookUploadClosed = nil, nil, nil, nil
	})
	return h
}

// waitBuffered waits until the worker holds n bytes of an upload.
func (h *uploadHooks) waitBuffered(t *testing.T, n int64) {
	t.Helper()
	for recvWithin(t, h.delivered, fmt.Sprintf("the worker to buffer %d bytes", n)) != n {
	}
}

func randomBytes(n int, seed uint64) []byte {
	b := make([]byte, n)
	_, _ = rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)}).Read(b)
	return b
}

func hexSum(p []byte) string {
	s := sha256.Sum256(p)
	return hex.EncodeToString(s[:])
}

// sumHandler answers "<bytes> <sha256> <content-length> <error>" for the
// body it read: with io.Copy, which takes the body's WriteTo, or with Read
// calls only if the query has "read".
func sumHandler(w http.ResponseWriter, r *http.Request) {
	sum := sha256.New()
	var body io.Reader = r.Body
	if r.URL.Query().Has("read") {
		body = struct{ io.Reader }{r.Body}
	}
	n, err := io.Copy(sum, body)
	fmt.Fprintf(w, "%d %x %d %v", n, sum.Sum(nil), r.ContentLength, err)
}

func streamReq(window int64, length int) treq {
	q := treq{method: "POST", uri: "/upload", window: strconv.FormatInt(window, 10), stream: true}
	if length >= 0 {
		q.headers = []mongrel2.Field{{Name: "content-length", Values: []string{strconv.Itoa(length)}}}
	}
	return q
}

// A large body streamed by a front end that respects the credit arrives
// intact; the worker never holds more than the window of it, and grants no
// more than the handler has read.
func TestUploadStreamed(t *testing.T) {
	const window = 1 << 20
	hooks := installUploadHooks(t)
	f := newTestFECtl(t)
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: http.HandlerFunc(sumHandler)})
	id := f.ctlWait("HELLO", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "HELLO") }).id

	data := randomBytes(64<<20, 1)
	tests := []struct {
		name    string
		size    int
		chunked bool // no content-length
		chunk   int  // BODY size
		read    bool // the handler reads with Read, not WriteTo
	}{
		{"64 MiB with content-length", 64 << 20, false, 256 << 10, false},
		{"64 MiB read with Read", 64 << 20, false, 256 << 10, true},
		{"chunked upload, odd message sizes", 3<<20 + 12345, true, 100_003, false},
		{"chunked upload, odd message sizes, Read", 3<<20 + 12345, true, 100_003, true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hooks.maxBuffered.Store(0)
			hooks.granted.Store(0)
			conn := strconv.Itoa(100 + i)
			body := data[:tt.size]
			length, wantCL := tt.size, tt.size
			if tt.chunked {
				length, wantCL = -1, -1
			}
			q := streamReq(window, length)
			if tt.read {
				q.uri += "?read"
			}
			f.request(conn, q)
			f.ctlWaitAck(conn)
			u := newUploader(f, id, conn, window, tt.chunk)
			u.send(body)
			u.end()
			r := f.readReply(conn, "POST")
			eq(t, "status", r.resp.StatusCode, 200)
			eq(t, "handler saw", string(r.body), fmt.Sprintf("%d %s %d <nil>", tt.size, hexSum(body), wantCL))
			if m := hooks.maxBuffered.Load(); m > window {
				t.Errorf("the worker buffered %d bytes, more than the window %d", m, window)
			}
			u.poll()
			if u.granted > int64(tt.size) || hooks.granted.Load() > int64(tt.size) {
				t.Errorf("granted %d bytes (queued %d) for a %d-byte body", u.granted, hooks.granted.Load(), tt.size)
			}
			t.Logf("%d bytes, %d UCREDIT messages, worker buffered at most %d", tt.size, len(u.grants), hooks.maxBuffered.Load())
		})
	}
}

// A handler that reads slowly holds the front end back: without reads there
// is no credit beyond the window, a read smaller than a quarter window (with
// more buffered) earns none yet, and then exactly what was read is granted.
func TestUploadSlowReader(t *testing.T) {
	const window = 256 << 10 // batch: 64 KiB
	const size = 1 << 20
	hooks := installUploadHooks(t)
	f := newTestFECtl(t)
	steps := make(chan int64)    // bytes to read next; -1: the rest, then answer
	readDone := make(chan int64) // total read after each step
	h := func(w http.ResponseWriter, r *http.Request) {
		sum := sha256.New()
		var total int64
		for n := range steps {
			if n < 0 {
				k, err := io.Copy(sum, r.Body)
				fmt.Fprintf(w, "%d %x %v", total+k, sum.Sum(nil), err)
				return
			}
			// One Read, as the bytes are all buffered already.
			buf := make([]byte, n)
			k, err := io.ReadFull(r.Body, buf)
			sum.Write(buf[:k])
			total += int64(k)
			if err != nil {
				t.Errorf("read: %v", err)
			}
			readDone <- total
		}
	}
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: http.HandlerFunc(h)})
	id := f.ctlWait("HELLO", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "HELLO") }).id

	data := randomBytes(size, 2)
	f.request("7", streamReq(window, size))
	f.ctlWaitAck("7")
	u := newUploader(f, id, "7", window, 64<<10)
	u.send(data[:window])
	// The worker holds the whole window; the handler has read nothing.
	hooks.waitBuffered(t, window)
	u.poll()
	if u.credit != 0 || u.granted != 0 || hooks.granted.Load() != 0 {
		t.Fatalf("credit %d, granted %d (queued %d) before the handler read anything", u.credit, u.granted, hooks.granted.Load())
	}

	steps <- 10 << 10
	eq(t, "read", recvWithin(t, readDone, "first read"), int64(10<<10))
	if g := hooks.granted.Load(); g != 0 {
		t.Errorf("granted %d after a read of 10 KiB with 246 KiB still buffered; want none before a quarter window", g)
	}

	steps <- 100 << 10
	eq(t, "read", recvWithin(t, readDone, "second read"), int64(110<<10))
	u.waitCredit()
	eq(t, "grants after 110 KiB read", fmt.Sprint(u.grants), fmt.Sprint([]int64{110 << 10}))
	eq(t, "queued grants", hooks.granted.Load(), int64(110<<10))

	steps <- -1
	u.send(data[window:])
	u.end()
	r := f.readReply("7", "POST")
	eq(t, "handler saw", string(r.body), fmt.Sprintf("%d %s <nil>", size, hexSum(data)))
	if m := hooks.maxBuffered.Load(); m > window {
		t.Errorf("the worker buffered %d bytes, more than the window %d", m, window)
	}
	close(steps)
}

// A front end that waits for credit before it has used all of it (or whose
// credit is used up by bytes the handler has all read) still gets it: when
// the handler has read everything delivered and waits for more, what it owes
// is granted, even below a quarter window.
func TestUploadGrantWhenDrained(t *testing.T) {
	const window = 1 << 20
	const piece = 100 << 10 // well below the 256 KiB batch
	installUploadHooks(t)
	f := newTestFECtl(t)
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: http.HandlerFunc(sumHandler)})
	id := f.ctlWait("HELLO", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "HELLO") }).id

	data := randomBytes(10*piece, 3)
	f.request("8", streamReq(window, len(data)))
	f.ctlWaitAck("8")
	u := newUploader(f, id, "8", window, piece)
	for i := 0; i < 10; i++ {
		u.sendRaw(data[i*piece : (i+1)*piece])
		u.sent += piece
		if i < 9 {
			u.waitCredit() // stingy: nothing more until the worker says so
		}
	}
	u.end()
	r := f.readReply("8", "POST")
	eq(t, "handler saw", string(r.body), fmt.Sprintf("%d %s %d <nil>", len(data), hexSum(data), len(data)))
	for i, g := range u.grants {
		if g != piece {
			t.Errorf("grant %d: %d bytes, want %d (what the handler read)", i, g, piece)
		}
	}
}

// Read fails when the body cannot be completed: BODYERR, a DISCONNECT, a
// body shorter than its content-length, more than the window, the control
// connection lost, or no control connection at all.
func TestUploadErrors(t *testing.T) {
	const window = 256 << 10
	hooks := installUploadHooks(t)
	f, noCtl := newTestFECtl(t), newTestFE(t)
	type result struct {
		n   int64
		err error
		cl  int64
	}
	results := make(chan result, 1)
	hold := make(chan struct{})
	h := func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			<-hold
		}
		n, err := io.Copy(io.Discard, r.Body)
		results <- result{n, err, r.ContentLength}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
		}
	}
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe, noCtl.fe}, Handler: http.HandlerFunc(h)})
	id := f.ctlWait("HELLO", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "HELLO") }).id
	data := randomBytes(window+1, 4)

	tests := []struct {
		name    string
		length  int
		send    func(t *testing.T, u *uploader) // after the ACK
		wantN   int64                           // -1: any
		wantErr error
		noReply bool
	}{
		{"BODYERR", 1 << 20, func(t *testing.T, u *uploader) {
			u.send(data[:100<<10])
			f.ctlSend(id, "BODYERR "+u.conn)
		}, 100 << 10, errUploadFailed, false},
		{"DISCONNECT", 1 << 20, func(t *testing.T, u *uploader) {
			u.send(data[:100<<10])
			u.waitDrained()
			f.ctlSend(id, "DISCONNECT "+u.conn)
		}, 100 << 10, errClientGone, true},
		{"shorter than content-length", 200 << 10, func(t *testing.T, u *uploader) {
			u.send(data[:100<<10])
			u.end()
		}, 100 << 10, io.ErrUnexpectedEOF, false},
		{"longer than content-length", 50 << 10, func(t *testing.T, u *uploader) {
			u.send(data[:100<<10])
			u.end()
		}, 100 << 10, io.ErrUnexpectedEOF, false},
		{"beyond the window", -1, func(t *testing.T, u *uploader) {
			// The handler reads nothing yet; a front end that ignores
			// the credit sends one byte too many.
			u.send(data[:window])
			hooks.waitBuffered(t, window)
			u.sendRaw(data[:1])
			// Messages are handled in order: once a BODY for nobody
			// is dropped, the one before it was handled too.
			newUploader(f, id, "999", 1, 1).sendRaw([]byte("x"))
			for recvWithin(t, hooks.dropped, "the marker BODY to be dropped") != "999" {
			}
			hold <- struct{}{}
		}, 0, errUploadOverrun, false},
		// Last: it takes the control channel down.
		{"control connection lost", 1 << 20, func(t *testing.T, u *uploader) {
			u.send(data[:10<<10])
			u.waitDrained()
			f.closeCtl()
		}, 10 << 10, errUploadLost, false},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := strconv.Itoa(200 + i)
			q := streamReq(window, tt.length)
			if tt.name == "beyond the window" {
				q.uri = "/hold"
			}
			f.request(conn, q)
			f.ctlWaitAck(conn)
			tt.send(t, newUploader(f, id, conn, window, 64<<10))
			r := recvWithin(t, results, "the handler's read to end")
			if !errors.Is(r.err, tt.wantErr) || (tt.wantN >= 0 && r.n != tt.wantN) {
				t.Errorf("read %d bytes, error %v; want %d, %v", r.n, r.err, tt.wantN, tt.wantErr)
			}
			eq(t, "ContentLength", r.cl, int64(tt.length))
			if !tt.noReply {
				eq(t, "status", f.readReply(conn, "POST").resp.StatusCode, http.StatusBadRequest)
			}
		})
	}

	t.Run("no control channel", func(t *testing.T) {
		// The front end never sends such a request (it streams only to
		// workers that speak the control channel), but if it did, the
		// body must fail at once rather than hang.
		noCtl.request("300", streamReq(window, 12345))
		r := recvWithin(t, results, "the handler's read to end")
		if !errors.Is(r.err, errUploadUnavailable) || r.n != 0 || r.cl != 12345 {
			t.Errorf("read %d bytes, error %v, ContentLength %d; want 0, %v, 12345", r.n, r.err, r.cl, errUploadUnavailable)
		}
		eq(t, "status", noCtl.readReply("300", "POST").resp.StatusCode, http.StatusBadRequest)
	})
}

// A handler that never reads the body and returns: the response completes,
// the buffered bytes are dropped, and BODY messages that still come for that
// request are discarded.
func TestUploadIgnoredBody(t *testing.T) {
	const window = 256 << 10
	hooks := installUploadHooks(t)
	f := newTestFECtl(t)
	var started sync.WaitGroup
	started.Add(1)
	release := make(chan struct{})
	h := func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ignore" {
			started.Done()
			<-release
			_, _ = io.WriteString(w, "ignored")
			return
		}
		sumHandler(w, r)
	}
	startWorker(t, &Worker{FrontEnds: []FrontEnd{f.fe}, Handler: http.HandlerFunc(h)})
	id := f.ctlWait("HELLO", func(m ctlMsg) bool { return strings.HasPrefix(m.body, "HELLO") }).id
	data := randomBytes(1<<20, 5)

	q := streamReq(window, len(data))
	q.uri = "/ignore"
	f.request("9", q)
	f.ctlWaitAck("9")
	started.Wait()
	u := newUploader(f, id, "9", window, 64<<10)
	u.send(data[:window]) // the whole credit, which is never granted back
	hooks.waitBuffered(t, window)
	close(release)
	eq(t, "reply", string(f.readReply("9", "POST").body), "ignored")
	eq(t, "closed", recvWithin(t, hooks.closed, "the upload to close"), "9")
	// A front end whose pump has not noticed the end yet.
	for i := 0; i < 3; i++ {
		u.sendRaw(data[:64<<10])
	}
	u.end()
	for i := 0; i < 3; i++ {
		eq(t, "dropped BODY", recvWithin(t, hooks.dropped, "a BODY to be dropped"), "9")
	}
	u.poll()
	if u.granted != 0 {
		t.Errorf("granted %d for a body nobody read", u.granted)
	}
	// The worker goes on as before.
	body := data[:200<<10]
	f.request("10", streamReq(window, len(body)))
	f.ctlWaitAck("10")
	u2 := newUploader(f, id, "10", window, 64<<10)
	u2.send(body)
	u2.end()
	eq(t, "next upload", string(f.readReply("10", "POST").body), fmt.Sprintf("%d %s %d <nil>", len(body), hexSum(body), len(body)))
}
