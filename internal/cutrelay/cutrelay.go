// Package cutrelay is a TCP relay for tests that need a connection the
// network dropped on one side only: CutWorkerSide closes the side of each
// relayed connection that faces the dialling peer (the worker) and leaves
// the side facing the target (the front end) open and silent, as a NAT or
// firewall that forgot the connection would. Stall, before it, loses what
// the worker sends while its connection still looks up to it, as a link
// that died before either end noticed does.
package cutrelay

import (
	"io"
	"net"
	"sync"
	"testing"
)

// Relay forwards TCP connections from a loopback port to a target.
type Relay struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	pairs  []*pair
	closed bool
	wg     sync.WaitGroup
}

type pair struct {
	worker, frontEnd net.Conn
	cut              bool
	// stalled: what the worker sends is read and dropped.
	stalled bool
}

// Start listens on a free loopback port and relays every connection to
// target (host:port); the test's cleanup closes it and every connection.
func Start(tb testing.TB, target string) *Relay {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	r := &Relay{ln: ln, target: target}
	r.wg.Add(1)
	go r.accept()
	tb.Cleanup(r.close)
	return r
}

// Endpoint is the relay's address as a ZeroMQ TCP endpoint.
func (r *Relay) Endpoint() string { return "tcp://" + r.ln.Addr().String() }

func (r *Relay) accept() {
	defer r.wg.Done()
	for {
		w, err := r.ln.Accept()
		if err != nil {
			return
		}
		fe, err := net.Dial("tcp", r.target)
		if err != nil {
			w.Close()
			continue
		}
		p := &pair{worker: w, frontEnd: fe}
		r.mu.Lock()
		if r.closed {
			// close went through the pairs while this one was dialled.
			r.mu.Unlock()
			w.Close()
			fe.Close()
			return
		}
		r.pairs = append(r.pairs, p)
		r.mu.Unlock()
		r.wg.Add(2)
		go r.pipe(p, fe, w)
		go r.pipe(p, w, fe)
	}
}

// pipe copies src to dst; the end of either side closes both, unless the
// pair was cut (the front end's side then stays open).
func (r *Relay) pipe(p *pair, dst, src net.Conn) {
	defer r.wg.Done()
	if src == p.worker {
		_, _ = io.Copy(stallWriter{r, p, dst}, src)
	} else {
		_, _ = io.Copy(dst, src)
	}
	r.mu.Lock()
	cut := p.cut
	r.mu.Unlock()
	if !cut {
		p.worker.Close()
		p.frontEnd.Close()
	}
}

// CutWorkerSide cuts the connections relayed so far on the worker's side;
// it returns how many.
func (r *Relay) CutWorkerSide() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, p := range r.pairs {
		if !p.cut {
			p.cut = true
			p.worker.Close()
			n++
		}
	}
	return n
}

// Stall drops, from now on, what the worker side of the connections
// relayed so far sends: the worker's writes succeed, and nothing reaches
// the front end. It returns how many connections it stalled.
func (r *Relay) Stall() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, p := range r.pairs {
		if !p.cut && !p.stalled {
			p.stalled = true
			n++
		}
	}
	return n
}

// stallWriter writes to the front end's side unless the pair is stalled.
type stallWriter struct {
	r   *Relay
	p   *pair
	dst net.Conn
}

func (w stallWriter) Write(b []byte) (int, error) {
	w.r.mu.Lock()
	stalled := w.p.stalled
	w.r.mu.Unlock()
	if stalled {
		return len(b), nil
	}
	return w.dst.Write(b)
}

func (r *Relay) close() {
	r.ln.Close()
	r.mu.Lock()
	r.closed = true
	for _, p := range r.pairs {
		p.cut = true
		p.worker.Close()
		p.frontEnd.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}
