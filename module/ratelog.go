package caddyzmq

import (
	"sync"
	"time"

	"go.uber.org/zap"
)

// warnEvery is how often one kind of warning about what peers send is
// written: a peer that sends thousands of bad frames a second must not
// flood the log, nor hide that it goes on.
const warnEvery = 10 * time.Second

// warnLimiter lets the first warning of each kind through, then one per
// warnEvery, and counts those it holds back, reported with the next one
// written. Kinds are the constant messages of the call sites, so the map
// stays small.
type warnLimiter struct {
	mu    sync.Mutex
	kinds map[string]*warnState
}

type warnState struct {
	last       time.Time
	suppressed int
}

// allow reports whether a warning of kind may be written at now, and how
// many were held back since the last one.
func (l *warnLimiter) allow(kind string, now time.Time) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.kinds == nil {
		l.kinds = make(map[string]*warnState)
	}
	st := l.kinds[kind]
	if st == nil {
		l.kinds[kind] = &warnState{last: now}
		return true, 0
	}
	if now.Sub(st.last) < warnEvery {
		st.suppressed++
		return false, 0
	}
	suppressed, st.suppressed, st.last = st.suppressed, 0, now
	return true, suppressed
}

// warnPeer writes a rate-limited warning about something a worker sent;
// key is the worker's CURVE key ("" without CURVE).
func (t *transport) warnPeer(msg, key string, fields ...zap.Field) {
	ok, suppressed := t.warn.allow(msg, time.Now())
	if !ok {
		return
	}
	if key != "" {
		fields = append(fields, zap.String("worker_key", key))
		if name := t.auth.nameOf(key); name != "" {
			fields = append(fields, zap.String("worker_key_name", name))
		}
	}
	if suppressed > 0 {
		fields = append(fields, zap.Int("suppressed_since_last", suppressed), zap.Duration("window", warnEvery))
	}
	t.logger.Warn(msg, fields...)
}
