package conformance

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zmqbridge/caddy-zmq/internal/zmqx"
)

// Config says where the kit binds and what the worker's application
// answers. Only Path is needed for most workers; the zero value works with
// any worker whose handler answers GET / with a non-empty body.
type Config struct {
	// Endpoints to bind; an empty one gets a free port on 127.0.0.1.
	Endpoints
	// SenderID is the front end's UUID in requests. Default
	// "zmqx-conformance".
	SenderID string
	// Path is requested with GET; its response must have a non-empty body.
	// Default "/".
	Path string
	// BigPath is requested with GET by the credit case; the larger its
	// response, the more the case exercises. Default: Path.
	BigPath string
	// HoldPath, if set, is a GET path whose handler does not answer until
	// its request is cancelled (it then ends its response). Without it the
	// kit holds requests by withholding reply credit, which needs Path's
	// response to take more than one reply frame under a 1-byte window.
	HoldPath string
	// UploadPath is POSTed a streamed body by the upload case; a handler
	// that reads the whole body before answering exercises it fully.
	// Default: Path.
	UploadPath string
	// Timeout bounds every wait for something the worker must do. Default
	// 10s.
	Timeout time.Duration
	// Quiet is how long the kit watches for something the worker must NOT
	// do (a worker that does it anyway is caught within it). Default 500ms.
	Quiet time.Duration
	// ControlWait is how long after its first reply the kit waits for a
	// worker's HELLO before it reports "no control channel". Default 2s.
	ControlWait time.Duration
	// WorkerWait is how long the first case waits for the worker to
	// connect. Default: Timeout.
	WorkerWait time.Duration
	// Cases, if not empty, runs only the cases named (see CaseNames).
	Cases []string
	// Stop, if set, makes the worker drain and exit; the bye case calls
	// it last. Without it that case is skipped.
	Stop func()
	// Logf, if set, receives progress lines.
	Logf func(format string, args ...any)
}

func (c *Config) defaults() {
	if c.SenderID == "" {
		c.SenderID = "zmqx-conformance"
	}
	if c.Path == "" {
		c.Path = "/"
	}
	if c.BigPath == "" {
		c.BigPath = c.Path
	}
	if c.UploadPath == "" {
		c.UploadPath = c.Path
	}
	if c.Timeout <= 0 {
		c.Timeout = 10 * time.Second
	}
	if c.Quiet <= 0 {
		c.Quiet = 500 * time.Millisecond
	}
	if c.ControlWait <= 0 {
		c.ControlWait = 2 * time.Second
	}
	if c.WorkerWait <= 0 {
		c.WorkerWait = c.Timeout
	}
}

// Status is a case's outcome.
type Status int

const (
	Pass Status = iota
	Fail
	Skip
	// NoControl: the worker does not speak zmqx/1 (it never connected to
	// the control endpoint); a plain Mongrel2 handler's zmqx cases end so.
	NoControl
)

func (s Status) String() string {
	switch s {
	case Pass:
		return "PASS"
	case Fail:
		return "FAIL"
	case Skip:
		return "SKIP"
	case NoControl:
		return "NO CONTROL CHANNEL"
	}
	return "?"
}

// Result is one case's outcome.
type Result struct {
	Case    string
	Status  Status
	Detail  string
	Elapsed time.Duration
}

// Report is the outcome of a run.
type Report struct {
	// WorkerID is the worker's identity on the control channel ("" if it
	// has none); MaxConcurrent what its HELLO said.
	WorkerID      string
	MaxConcurrent int
	Results       []Result
}

// Failed reports whether any case failed.
func (r Report) Failed() bool {
	for _, c := range r.Results {
		if c.Status == Fail {
			return true
		}
	}
	return false
}

// Result returns the result of the named case.
func (r Report) Result(name string) (Result, bool) {
	for _, c := range r.Results {
		if c.Case == name {
			return c, true
		}
	}
	return Result{}, false
}

// Table is the report as a table, one case per line.
func (r Report) Table() string {
	var b strings.Builder
	w := len("CASE")
	for _, c := range r.Results {
		w = max(w, len(c.Case))
	}
	id := r.WorkerID
	if id == "" {
		id = "(no control channel)"
	}
	fmt.Fprintf(&b, "worker %s, max_concurrent %d\n", id, r.MaxConcurrent)
	fmt.Fprintf(&b, "%-*s  %-18s  %s\n", w, "CASE", "RESULT", "DETAIL")
	for _, c := range r.Results {
		fmt.Fprintf(&b, "%-*s  %-18s  %s\n", w, c.Case, c.Status, c.Detail)
	}
	pass, fail := 0, 0
	for _, c := range r.Results {
		switch c.Status {
		case Pass:
			pass++
		case Fail:
			fail++
		}
	}
	fmt.Fprintf(&b, "%d passed, %d failed, %d other\n", pass, fail, len(r.Results)-pass-fail)
	return b.String()
}

// Kit is a front end bound and waiting for a worker.
type Kit struct {
	cfg Config
	fe  *frontEnd
}

// Start binds the kit's sockets; connect the worker to Endpoints, then
// call Run.
func Start(cfg Config) (*Kit, error) {
	cfg.defaults()
	for _, name := range cfg.Cases {
		if !isCase(name) {
			return nil, fmt.Errorf("conformance: no case %q (cases: %s)", name, strings.Join(CaseNames(), ", "))
		}
	}
	fe, err := newFrontEnd(cfg.Endpoints, cfg.SenderID)
	if err != nil {
		return nil, err
	}
	return &Kit{cfg: cfg, fe: fe}, nil
}

// Endpoints are the bound endpoints, for the worker to connect to.
func (k *Kit) Endpoints() Endpoints { return k.fe.ep }

// SetStop sets Config.Stop once the worker is started on Endpoints.
func (k *Kit) SetStop(stop func()) { k.cfg.Stop = stop }

// SetWorkerWait sets Config.WorkerWait, for a worker started by hand once
// the endpoints are printed.
func (k *Kit) SetWorkerWait(d time.Duration) { k.cfg.WorkerWait = d }

// Close unbinds the sockets.
func (k *Kit) Close() { k.fe.close() }

// Run runs the cases in order and reports them. The worker may start
// before or after Run is called (the first case waits Timeout for it).
func (k *Kit) Run(ctx context.Context) Report {
	s := &session{ctx: ctx, cfg: k.cfg, fe: k.fe}
	var rep Report
	for _, c := range allCases {
		if !k.selected(c.name) {
			continue
		}
		start := time.Now()
		var res Result
		switch {
		case ctx.Err() != nil:
			res = Result{Status: Skip, Detail: "cancelled"}
		case c.control && !s.controlKnown():
			res = Result{Status: NoControl, Detail: "the worker never spoke on the control endpoint"}
		default:
			res = c.run(s)
		}
		res.Case, res.Elapsed = c.name, time.Since(start)
		s.logf("%s: %s %s", res.Case, res.Status, res.Detail)
		rep.Results = append(rep.Results, res)
		s.cleanup()
	}
	rep.WorkerID, rep.MaxConcurrent = s.worker, s.maxConc
	return rep
}

func (k *Kit) selected(name string) bool {
	if len(k.cfg.Cases) == 0 {
		return true
	}
	for _, n := range k.cfg.Cases {
		if n == name {
			return true
		}
	}
	return false
}

func isCase(name string) bool {
	for _, c := range allCases {
		if c.name == name {
			return true
		}
	}
	return false
}

// CaseNames lists the cases in the order they run.
func CaseNames() []string {
	names := make([]string, len(allCases))
	for i, c := range allCases {
		names[i] = c.name
	}
	return names
}

// Test runs the kit against a worker that start launches on the given
// endpoints, and fails t for every failed case. start returns a function
// that makes the worker drain and waits for it to exit (the bye case calls
// it; Test calls it at the end if it has not run).
func Test(t testing.TB, cfg Config, start func(Endpoints) (stop func())) Report {
	t.Helper()
	k, err := Start(cfg)
	if err != nil {
		t.Fatalf("conformance: %v", err)
	}
	defer k.Close()
	stop := start(k.Endpoints())
	var once sync.Once
	stopOnce := func() { once.Do(stop) }
	defer stopOnce()
	k.SetStop(stopOnce)
	if k.cfg.Logf == nil {
		k.cfg.Logf = t.Logf
	}
	rep := k.Run(context.Background())
	t.Logf("%s conformance:\n%s", zmqx.Version, rep.Table())
	for _, r := range rep.Results {
		if r.Status == Fail {
			t.Errorf("conformance case %s failed: %s", r.Case, r.Detail)
		}
	}
	return rep
}
