package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"sync"
	"time"
)

// Caddy's log lines the suite looks for (logger http.handlers.zmq[.transport]).
const (
	msgJoined   = "worker joined the control channel"
	msgLost     = "worker lost" // prefix: "worker lost: no control message within the liveness bound"
	msgDrained  = "worker left after draining"
	msgHung     = "worker hung" // prefix: "worker hung: it answers nothing; ..."
	msgRetry    = "retrying idempotent request after losing its worker"
	msgResend   = "re-sending a request no worker took in time"
	msgAborting = "aborting with incomplete response"
	// loggerFailed is Caddy's error log, where the zmq handler's failed
	// requests are logged (msg is the error, status and request beside).
	loggerFailed = "http.log.error"
	// errWorkerLost is in the error of a request failed that way.
	errWorkerLost = "went silent"
)

// event is one JSON line of Caddy's log (the fields the suite uses).
type event struct {
	Level          string  `json:"level"`
	TS             float64 `json:"ts"`
	Logger         string  `json:"logger"`
	Msg            string  `json:"msg"`
	Worker         string  `json:"worker"`
	Status         int     `json:"status"`
	Method         string  `json:"method"`
	URI            string  `json:"uri"`
	Error          string  `json:"error"`
	RequestsFailed int     `json:"requests_failed"`
	// Request is the request of a line of Caddy's error log.
	Request struct {
		Method string `json:"method"`
		URI    string `json:"uri"`
	} `json:"request"`
}

func (e *event) time() time.Time {
	sec := int64(e.TS)
	return time.Unix(sec, int64((e.TS-float64(sec))*1e9))
}

// eventLog collects Caddy's log as it is written and lets the suite wait for
// a line. Lines that are not JSON (a Go panic, a fatal error) are kept apart:
// Caddy writes nothing else to stderr.
type eventLog struct {
	mu      sync.Mutex
	events  []event
	other   []string
	changed chan struct{} // closed and replaced on every line
}

func newEventLog() *eventLog { return &eventLog{changed: make(chan struct{})} }

func (l *eventLog) line(b []byte) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return
	}
	var e event
	err := json.Unmarshal(b, &e)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil || e.Msg == "" {
		if len(l.other) < 1000 {
			l.other = append(l.other, string(b))
		}
	} else {
		l.events = append(l.events, e)
	}
	close(l.changed)
	l.changed = make(chan struct{})
}

// snapshot returns the events so far and a channel closed at the next line.
func (l *eventLog) snapshot() ([]event, []string, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.events, l.other, l.changed
}

// waitFor waits until an event satisfies match (looking at events from
// index from on), or timeout, or abort is closed. It returns the event.
func (l *eventLog) waitFor(from int, timeout time.Duration, abort <-chan struct{}, match func(*event) bool) (*event, bool) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		evs, _, changed := l.snapshot()
		for i := from; i < len(evs); i++ {
			if match(&evs[i]) {
				e := evs[i]
				return &e, true
			}
		}
		from = len(evs)
		select {
		case <-changed:
		case <-t.C:
			return nil, false
		case <-abort:
			return nil, false
		}
	}
}

func (l *eventLog) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.events)
}

// crashLines are non-JSON lines that look like a Go crash.
func (l *eventLog) crashLines() []string {
	_, other, _ := l.snapshot()
	var out []string
	for _, s := range other {
		if strings.HasPrefix(s, "panic:") || strings.HasPrefix(s, "fatal error:") || strings.HasPrefix(s, "SIGSEGV") {
			out = append(out, s)
		}
	}
	return out
}
