package workerkit

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"time"
)

// Stats is the worker's own view of its work, as Worker.Stats reads it.
type Stats struct {
	// ID is the worker id on its front ends' control channels.
	ID string `json:"id"`
	// InFlight counts the handlers running now.
	InFlight int64 `json:"in_flight"`
	// MaxConcurrent is the worker's bound on them; FreeSlots are those
	// not taken. A worker with no free slot pulls no new request.
	MaxConcurrent int `json:"max_concurrent"`
	FreeSlots     int `json:"free_slots"`
	// CreditStalls counts the times a response waited for reply credit
	// from its front end: its client reads slower than the handler writes.
	CreditStalls int64 `json:"credit_stalls"`
	// CreditStallSeconds is the time responses spent waiting for it.
	CreditStallSeconds float64 `json:"credit_stall_seconds"`
	// DroppedLate counts requests never started because they arrived past
	// their dispatch deadline (the front end re-sends them);
	// DroppedUnacked those that carried one and could not be acknowledged.
	DroppedLate    int64 `json:"dropped_late"`
	DroppedUnacked int64 `json:"dropped_unacked"`
	// DroppedUnconfirmed counts requests marked ZMQX_CONFIRM that were
	// never started because the front end did not confirm their ACK (it
	// had sent them again, or their client left) or they were cancelled
	// first.
	DroppedUnconfirmed int64 `json:"dropped_unconfirmed"`
	// FrontEnds are the front ends served, in the order of
	// Worker.FrontEnds.
	FrontEnds []FrontEndStats `json:"frontends"`
}

// FrontEndStats is the state of one front end as the worker sees it.
type FrontEndStats struct {
	// FrontEnd is the front end's endpoints, as FrontEnd.String writes
	// them.
	FrontEnd string `json:"frontend"`
	// Subscribed: the front end is subscribed to the worker's replies, so
	// the worker takes its requests.
	Subscribed bool `json:"subscribed"`
	// Control: the front end has a control channel; ControlConnected: it
	// is up (HELLO sent on the current connection).
	Control          bool `json:"control"`
	ControlConnected bool `json:"control_connected"`
	// Paused: the front end told the worker PAUSE (it finds it hung, or an
	// operator drained it): its requests are handed back until RESUME.
	Paused bool `json:"paused"`
}

var errNotServing = errors.New("workerkit: the worker is not serving")

// Stats returns the worker's counters while Serve runs; it fails before
// Serve has started its sockets and after it has returned. Any goroutine may
// call it at any time.
func (w *Worker) Stats() (Stats, error) {
	s, _ := w.serving.Load().(*server)
	if s == nil {
		return Stats{}, errNotServing
	}
	st := Stats{
		ID:                 s.id,
		InFlight:           s.running.Load(),
		MaxConcurrent:      s.maxConc,
		FreeSlots:          s.maxConc - len(s.sem),
		CreditStalls:       s.creditStalls.n.Load(),
		CreditStallSeconds: time.Duration(s.creditStalls.nanos.Load()).Seconds(),
		DroppedLate:        s.droppedLate.Load(),
		DroppedUnacked:     s.droppedUnacked.Load(),
		DroppedUnconfirmed: s.droppedUnconfirmed.Load(),
		FrontEnds:          make([]FrontEndStats, len(s.fes)),
	}
	for i, fe := range s.fes {
		st.FrontEnds[i] = FrontEndStats{
			FrontEnd:   fe.cfg.String(),
			Subscribed: fe.active.Load(),
			Control:    fe.ctl != nil,
			Paused:     fe.paused.Load(),
		}
		if fe.ctl != nil {
			st.FrontEnds[i].ControlConnected = fe.ctl.connected.Load()
		}
	}
	return st, nil
}

// DebugHandler serves w.Stats as JSON (503 while w is not serving).
func DebugHandler(w *Worker) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		st, err := w.Stats()
		rw.Header().Set("Content-Type", "application/json")
		if err != nil {
			rw.WriteHeader(http.StatusServiceUnavailable)
			_ = json.NewEncoder(rw).Encode(map[string]string{"error": err.Error()})
			return
		}
		_ = json.NewEncoder(rw).Encode(st)
	})
}

// ServeDebug serves DebugHandler(w) on addr (e.g. 127.0.0.1:6060) until ctx
// is done. Keep addr private: it tells what the worker is doing to whoever
// asks.
func ServeDebug(ctx context.Context, addr string, w *Worker) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return serveDebugOn(ctx, ln, w)
}

func serveDebugOn(ctx context.Context, ln net.Listener, w *Worker) error {
	srv := &http.Server{Handler: DebugHandler(w), ReadHeaderTimeout: 5 * time.Second}
	stopped := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			_ = srv.Close()
		case <-stopped:
		}
	}()
	err := srv.Serve(ln)
	close(stopped)
	if ctx.Err() != nil {
		return nil
	}
	return err
}
