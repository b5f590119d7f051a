package caddyzmq

import (
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Prometheus metrics, all named caddy_zmq_* and labelled by pool (never by
// worker: worker ids come and go without bound). What requests do is
// counted as it happens, into children resolved once per pool at
// provision; what the pools and workers are is read when /metrics is
// scraped (stateCollector), so it costs the hot path nothing.
//
// Collectors are created once per process and registered in the registry
// of every config that provisions the handler (Caddy gives each config its
// own), so counters keep counting across reloads.

const metricsNamespace, metricsSubsystem = "caddy", "zmq"

// outcome is how a request ended, as counted by caddy_zmq_requests_total.
type outcome int

const (
	outcomeAnswered   outcome = iota // the worker's reply was relayed in full
	outcomeBadGateway                // 502: bad reply, or its worker lost and no retry
	outcomeNoWorker                  // 503: no worker, queues full, or no slot in time
	outcomeTimeout                   // 504: no reply within reply_timeout
	outcomeTooLarge                  // 413: request body over max_request_body
	outcomeBadRequest                // 400: the request body could not be read
	outcomeError                     // 500: Caddy's own failure (an upload file)
	outcomeClientGone                // the client left before the reply was complete
	outcomeAborted                   // the reply had started, then failed: connection reset
	numOutcomes
)

var outcomeLabels = [numOutcomes]string{"answered", "502", "503", "504", "413", "400", "500", "client_gone", "aborted"}

// outcomeOfStatus maps a status the handler answered with itself.
func outcomeOfStatus(status int) outcome {
	switch status {
	case http.StatusBadGateway:
		return outcomeBadGateway
	case http.StatusServiceUnavailable:
		return outcomeNoWorker
	case http.StatusGatewayTimeout:
		return outcomeTimeout
	case http.StatusRequestEntityTooLarge:
		return outcomeTooLarge
	case http.StatusBadRequest:
		return outcomeBadRequest
	case 499: // nginx's and reverse_proxy's "client closed request"
		return outcomeClientGone
	}
	return outcomeError
}

var zmqMetrics struct {
	once      sync.Once
	requests  *prometheus.CounterVec
	resends   *prometheus.CounterVec
	retries   *prometheus.CounterVec
	slotWait  *prometheus.HistogramVec
	firstByte *prometheus.HistogramVec
	state     *stateCollector
	// unpooled counts requests that failed before any pool was chosen in
	// a handler of several pools (label pool=""). Made at its first use:
	// its series would otherwise be in every scrape, most often all zero.
	unpooledOnce sync.Once
	unpooled     *poolObs
}

// unpooledObs is zmqMetrics.unpooled, made on first use.
func unpooledObs() *poolObs {
	initMetrics()
	m := &zmqMetrics
	m.unpooledOnce.Do(func() { m.unpooled = newPoolObs("") })
	return m.unpooled
}

func initMetrics() {
	zmqMetrics.once.Do(func() {
		m := &zmqMetrics
		opts := func(name, help string) prometheus.CounterOpts {
			return prometheus.CounterOpts{Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: name, Help: help}
		}
		m.requests = prometheus.NewCounterVec(opts("requests_total",
			"Requests by how they ended: answered, or the status the handler answered with itself (502, 503, 504, 413, 400, 500), client_gone, aborted."),
			[]string{"pool", "outcome"})
		m.resends = prometheus.NewCounterVec(opts("resends_total",
			"Requests sent again because no worker had started them (handed back, or past their dispatch deadline): safe for every method."),
			[]string{"pool"})
		m.retries = prometheus.NewCounterVec(opts("retries_total",
			"Idempotent requests sent again after their worker was lost (reason lost) or taken back from a hung worker (reason hung)."),
			[]string{"pool", "reason"})
		buckets := []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
		m.slotWait = prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: "slot_wait_seconds",
			Help:    "Time requests that found every in-flight slot of the pool taken (max_inflight) waited for one.",
			Buckets: buckets,
		}, []string{"pool"})
		m.firstByte = prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: "first_byte_seconds",
			Help:    "Time from a request's first send to a worker to the first frame of its reply (re-sends and retries included).",
			Buckets: buckets,
		}, []string{"pool"})
		m.state = newStateCollector()
	})
}

// registerMetrics adds the collectors to a config's registry. A second
// handler of the same config finds them there already.
func registerMetrics(reg *prometheus.Registry) error {
	initMetrics()
	m := &zmqMetrics
	for _, c := range []prometheus.Collector{m.requests, m.resends, m.retries, m.slotWait, m.firstByte, m.state} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return err
			}
		}
	}
	return nil
}

// forgetPoolMetrics drops the series of pools that no config has any more.
func forgetPoolMetrics(names []string) {
	m := &zmqMetrics
	for _, name := range names {
		l := prometheus.Labels{"pool": name}
		m.requests.DeletePartialMatch(l)
		m.resends.DeletePartialMatch(l)
		m.retries.DeletePartialMatch(l)
		m.slotWait.DeletePartialMatch(l)
		m.firstByte.DeletePartialMatch(l)
	}
}

// poolObs is what the hot path of one pool counts into.
type poolObs struct {
	outcomes    [numOutcomes]prometheus.Counter
	resends     prometheus.Counter
	retriesLost prometheus.Counter
	retriesHung prometheus.Counter
	slotWait    prometheus.Observer
	firstByte   prometheus.Observer
	// waiting counts requests waiting for an in-flight slot now.
	waiting atomic.Int64
}

func newPoolObs(pool string) *poolObs {
	m := &zmqMetrics
	o := &poolObs{
		resends:     m.resends.WithLabelValues(pool),
		retriesLost: m.retries.WithLabelValues(pool, "lost"),
		retriesHung: m.retries.WithLabelValues(pool, "hung"),
		slotWait:    m.slotWait.WithLabelValues(pool),
		firstByte:   m.firstByte.WithLabelValues(pool),
	}
	for i := range o.outcomes {
		o.outcomes[i] = m.requests.WithLabelValues(pool, outcomeLabels[i])
	}
	return o
}

// metrics is p's poolObs; a pool that was never provisioned (unit tests
// build some by hand) counts as unpooled.
func (p *poolRuntime) metrics() *poolObs {
	if p.obs != nil {
		return p.obs
	}
	return unpooledObs()
}

// waitForSlot counts a request that has to wait for a slot; the function
// it returns ends the wait.
func (o *poolObs) waitForSlot() func() {
	o.waiting.Add(1)
	start := time.Now()
	return func() {
		o.waiting.Add(-1)
		o.slotWait.Observe(time.Since(start).Seconds())
	}
}

// observeFirstByte records the first reply frame of a request first sent
// at start.
func (o *poolObs) observeFirstByte(start time.Time) {
	o.firstByte.Observe(time.Since(start).Seconds())
}

// countOutcome counts how the request ended. It runs once per request,
// after the last attempt, with what ServeHTTP returns (a HandlerError names
// the status the handler answered with); the answered case reads only the
// reply state.
func (h *Handler) countOutcome(r *http.Request, st *requestState, err error) {
	var o *poolObs
	if st.pool != nil {
		o = st.pool.metrics()
	} else {
		o = h.unsentObs()
	}
	if st.rr.Done() {
		o.outcomes[outcomeAnswered].Inc()
		return
	}
	var he caddyhttp.HandlerError
	if errors.As(err, &he) && he.StatusCode != 0 {
		o.outcomes[outcomeOfStatus(he.StatusCode)].Inc()
		return
	}
	if st.rr.HeadDone() && r.Context().Err() == nil {
		o.outcomes[outcomeAborted].Inc()
		return
	}
	o.outcomes[outcomeClientGone].Inc()
}

// unsentObs is where a request that failed before a pool was chosen is
// counted: the handler's pool if it has one, else the unpooled series.
func (h *Handler) unsentObs() *poolObs {
	if len(h.pools) == 1 {
		return h.pools[0].metrics()
	}
	return unpooledObs()
}

// countUnsent counts a request the handler answered with err (a
// HandlerError) before sending it anywhere.
func (h *Handler) countUnsent(err error) {
	o := h.unsentObs()
	var he caddyhttp.HandlerError
	if errors.As(err, &he) && he.StatusCode != 0 {
		o.outcomes[outcomeOfStatus(he.StatusCode)].Inc()
		return
	}
	o.outcomes[outcomeError].Inc()
}

// A broadcast counts in caddy_zmq_requests_total once per worker asked,
// in that worker's pool, as the request sent to it ended (bcLine.outcome):
// answered (its answer came in full), 502 (a bad or too large answer, or
// the worker lost or found hung first), 503 (not sent: no in-flight slot
// in time, or the worker gone before its request could be routed), 504
// (no answer within the broadcast's timeout), client_gone (the client
// left first). A broadcast that asks nobody (no live worker:
// 503; a request body over the limit: 413, or unreadable: 400) counts
// once, like any request.

// stateCollector reports, at scrape time, the state of the provisioned
// pools and the counters their sockets keep.
type stateCollector struct {
	inFlight, waiting, maxInflight, connections, workers   *prometheus.Desc
	joined, lost, hung, redials, bytes, malformed, unknown *prometheus.Desc
	refused, dropped                                       *prometheus.Desc
}

func newStateCollector() *stateCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(metricsNamespace, metricsSubsystem, name), help, append([]string{"pool"}, labels...), nil)
	}
	return &stateCollector{
		inFlight:    d("requests_in_flight", "Requests holding an in-flight slot of the pool (waiting for or relaying a reply)."),
		waiting:     d("requests_waiting", "Requests waiting for an in-flight slot (max_inflight reached)."),
		maxInflight: d("max_inflight", "The pool's in-flight slots (max_inflight)."),
		connections: d("connections", "ZMTP connections to the pool's request socket: every worker, Mongrel2 handlers included."),
		workers:     d("workers", "Workers on the pool's control channel by state: live, paused (hung), draining, lost (lately).", "state"),
		joined:      d("workers_joined_total", "Workers heard on the control channel for the first time (or again after being lost)."),
		lost:        d("workers_lost_total", "Workers declared lost: silent past the liveness bound."),
		hung:        d("workers_hung_total", "Times a worker was found hung: holding requests and answering none."),
		redials:     d("control_redials_total", "Control connections closed because their worker's key dialled again while they lingered (a worker that redialled)."),
		bytes:       d("bytes_total", "Bytes of Mongrel2 messages sent to workers (direction up: requests, their bodies included) and received from them (down: replies).", "direction"),
		malformed:   d("malformed_replies_total", "Replies dropped because they could not be parsed or named another sender."),
		unknown:     d("unknown_replies_total", "Replies for a connection that is over or never was (late, after a timeout or a client that left)."),
		refused:     d("handshakes_refused_total", "Worker connections refused at the security handshake (CURVE)."),
		dropped: prometheus.NewDesc(prometheus.BuildFQName(metricsNamespace, metricsSubsystem, "events_dropped_total"),
			"Worker events not emitted because the queue to the events app was full.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (s *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{s.inFlight, s.waiting, s.maxInflight, s.connections, s.workers,
		s.joined, s.lost, s.hung, s.redials, s.bytes, s.malformed, s.unknown, s.refused, s.dropped} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (s *stateCollector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(s.dropped, eventsDropped.Load())
	for _, g := range provisioned.pools() {
		var inFlight, waiting, slots int64
		for _, p := range g.runtimes {
			inFlight += int64(len(p.slots))
			waiting += p.metrics().waiting.Load()
		}
		slots = int64(cap(g.runtimes[0].slots))
		gauge(s.inFlight, float64(inFlight), g.name)
		gauge(s.waiting, float64(waiting), g.name)
		gauge(s.maxInflight, float64(slots), g.name)

		var conns int64
		var up, down, malformed, unknown, refused, joined, lost, hung, redials uint64
		states := map[string]int{stateLive: 0, statePaused: 0, stateDraining: 0, stateLost: 0}
		for _, t := range g.transports {
			conns += t.conns.Load()
			up += t.bytesUp.Load()
			down += t.bytesDown.Load()
			malformed += t.badReplies.Load()
			unknown += t.unknownReplies.Load()
			refused += t.refusedHandshakes.Load()
			if t.auth != nil {
				refused += t.auth.refused.Load() // CURVE's ZAP handler and monitors
			}
			if c := t.control; c != nil {
				joined += c.joinedTotal.Load()
				lost += c.lostTotal.Load()
				hung += c.hungTotal.Load()
				redials += c.redials.Load()
				c.countStates(states)
			}
		}
		gauge(s.connections, float64(conns), g.name)
		for _, st := range []string{stateLive, statePaused, stateDraining, stateLost} {
			gauge(s.workers, float64(states[st]), g.name, st)
		}
		counter(s.joined, joined, g.name)
		counter(s.lost, lost, g.name)
		counter(s.hung, hung, g.name)
		counter(s.redials, redials, g.name)
		counter(s.bytes, up, g.name, "up")
		counter(s.bytes, down, g.name, "down")
		counter(s.malformed, malformed, g.name)
		counter(s.unknown, unknown, g.name)
		counter(s.refused, refused, g.name)
	}
}

// countStates adds the workers of c by state to states.
func (c *controlPlane) countStates(states map[string]int) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, wi := range c.workers {
		st, _ := wi.state()
		states[st]++
	}
	for id, g := range c.gone {
		if _, back := c.workers[id]; !back && now.Sub(g.at) <= lostShownFor {
			states[stateLost]++
		}
	}
}

// noteHandshakeRefused counts a worker connection refused at the security
// handshake (caddy_zmq_handshakes_refused_total): the hook for CURVE's ZAP
// handler and socket monitor.
func (t *transport) noteHandshakeRefused() { t.refusedHandshakes.Add(1) }

// countUp and countDown add n bytes sent to or received from a worker on
// the control channel; a control plane built bare (unit tests) counts
// nothing.
func (c *controlPlane) countUp(n int) {
	if c.t != nil {
		c.t.bytesUp.Add(uint64(n))
	}
}

func (c *controlPlane) countDown(n int) {
	if c.t != nil {
		c.t.bytesDown.Add(uint64(n))
	}
}
