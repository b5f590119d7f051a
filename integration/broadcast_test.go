package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"
)

// bcLine is one NDJSON line of a broadcast response (module/broadcast.go).
type bcLine struct {
	Type       string              `json:"type"`
	Worker     string              `json:"worker"`
	Status     int                 `json:"status"`
	Headers    map[string][]string `json:"headers"`
	Body       *string             `json:"body"`
	BodyBase64 []byte              `json:"body_base64"`
	Error      string              `json:"error"`
	Asked      int                 `json:"asked"`
	Answered   int                 `json:"answered"`
	Failed     int                 `json:"failed"`
	TimedOut   int                 `json:"timed_out"`
	AnsweredBy []string            `json:"answered_by"`
	FailedBy   []string            `json:"failed_by"`
	TimedOutBy []string            `json:"timed_out_by"`

	at time.Duration // since the request was sent
}

// bcResponse is a broadcast's response, line by line.
type bcResponse struct {
	status int
	lines  []bcLine
}

func (r bcResponse) summary() (bcLine, bool) {
	if len(r.lines) == 0 || r.lines[len(r.lines)-1].Type != "summary" {
		return bcLine{}, false
	}
	return r.lines[len(r.lines)-1], true
}

func (r bcResponse) ofType(typ string) []bcLine {
	var out []bcLine
	for _, l := range r.lines {
		if l.Type == typ {
			out = append(out, l)
		}
	}
	return out
}

// broadcast sends GET url and reads the NDJSON lines as they arrive.
// headed, if not nil, is closed once the response head is in: the worker
// set is fixed by then.
func broadcast(client *http.Client, url string, headed chan<- struct{}) (bcResponse, error) {
	start := time.Now()
	resp, err := client.Get(url)
	if headed != nil {
		close(headed)
	}
	if err != nil {
		return bcResponse{}, err
	}
	defer resp.Body.Close()
	out := bcResponse{status: resp.StatusCode}
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode == http.StatusOK && ct != "application/x-ndjson" {
		return out, fmt.Errorf("Content-Type %q", ct)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var l bcLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return out, fmt.Errorf("line %q: %w", sc.Text(), err)
		}
		l.at = time.Since(start)
		out.lines = append(out.lines, l)
	}
	return out, sc.Err()
}

// checkAllAnswered checks that every worker in ids answered exactly once,
// with the broadcast marker, and that the summary says so.
func checkAllAnswered(r bcResponse, ids []string) error {
	if r.status != http.StatusOK {
		return fmt.Errorf("status %d", r.status)
	}
	sum, ok := r.summary()
	if !ok {
		return fmt.Errorf("no summary line last: %+v", r.lines)
	}
	var got []string
	for _, l := range r.ofType("answer") {
		var a pinnedAnswer
		if l.Status != http.StatusOK || l.Body == nil || json.Unmarshal([]byte(*l.Body), &a) != nil {
			return fmt.Errorf("answer of %s: %+v", l.Worker, l)
		}
		if a.Worker != l.Worker || !a.Broadcast {
			return fmt.Errorf("answer line of %s has the body of %s (broadcast %v)", l.Worker, a.Worker, a.Broadcast)
		}
		got = append(got, l.Worker)
	}
	slices.Sort(got)
	if !slices.Equal(got, ids) || len(r.lines) != len(ids)+1 {
		return fmt.Errorf("answers from %v (%d lines), want each of %v once", got, len(r.lines), ids)
	}
	if sum.Asked != len(ids) || sum.Answered != len(ids) || sum.Failed != 0 || sum.TimedOut != 0 {
		return fmt.Errorf("summary %+v", sum)
	}
	return nil
}

// TestBroadcast: caddyfiles/broadcast.Caddyfile (/all/* is a broadcast
// route, everything else is balanced) in front of four bin/pinned-worker
// processes on the control channel. Every worker answers each broadcast
// exactly once, also under concurrent broadcasts and balanced requests. A
// worker killed and one frozen (SIGSTOP) during a broadcast are reported
// failed at the control channel's liveness bound, the two others answer,
// and the response ends long before the broadcast's timeout.
func TestBroadcast(t *testing.T) {
	const timeout = 30 * time.Second
	c := startCaddy(t, caddyOpts{Config: "caddyfiles/broadcast.Caddyfile", Endpoints: []string{"ZMQ_CONTROL"},
		// The answers below take longer than the default hung_timeout.
		Env: map[string]string{"BROADCAST_TIMEOUT": timeout.String(), "HUNG_TIMEOUT": "10s"}})
	ids := []string{"bc-1", "bc-2", "bc-3", "bc-4"}
	workers := map[string]*process{}
	procs := []*process{c.proc}
	for _, id := range ids {
		p := startPinnedWorker(t, id, c.controlFrontEnd())
		workers[id] = p
		procs = append(procs, p)
	}
	client := c.Client(modeHTTP)
	t.Cleanup(client.CloseIdleConnections)
	waitPinnedWorkers(t, client, c.HTTPURL("/"), ids, procs...)
	// The balanced requests above prove each worker takes requests; its
	// control channel HELLO may still be on its way.
	err := poll(startTimeout, anyExited(procs), func() error {
		r, err := broadcast(client, c.HTTPURL("/all/ready"), nil)
		if err != nil {
			return err
		}
		return checkAllAnswered(r, ids)
	})
	if err != nil {
		t.Fatalf("waiting for every worker to answer a broadcast: %v", err)
	}

	t.Run("every worker answers once", func(t *testing.T) {
		r, err := broadcast(client, c.HTTPURL("/all/stats"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := checkAllAnswered(r, ids); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("concurrent broadcasts and normal traffic: none duplicated or lost", func(t *testing.T) {
		const clients, rounds = 6, 8
		var wg sync.WaitGroup
		errs := make(chan error, 2*clients*rounds)
		for i := range clients {
			wg.Add(2)
			go func() {
				defer wg.Done()
				cl := c.Client(modeHTTP)
				defer cl.CloseIdleConnections()
				for j := range rounds {
					r, err := broadcast(cl, c.HTTPURL(fmt.Sprintf("/all/c%d-%d", i, j)), nil)
					if err == nil {
						err = checkAllAnswered(r, ids)
					}
					if err != nil {
						errs <- fmt.Errorf("broadcast %d/%d: %w", i, j, err)
					}
				}
			}()
			go func() {
				defer wg.Done()
				cl := c.Client(modeHTTP)
				defer cl.CloseIdleConnections()
				for j := range rounds * 4 {
					st, a, err := pinnedGet(cl, c.HTTPURL(fmt.Sprintf("/n%d-%d", i, j)), "")
					if err != nil || st != http.StatusOK || a.Broadcast || a.Worker == "" {
						errs <- fmt.Errorf("normal request %d/%d: status %d, %v, %+v", i, j, st, err, a)
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	t.Run("one killed, one frozen: two answers, two failures, before the timeout", func(t *testing.T) {
		const sleep = 3 * time.Second
		headed := make(chan struct{})
		type result struct {
			r   bcResponse
			err error
		}
		done := make(chan result, 1)
		go func() {
			r, err := broadcast(client, c.HTTPURL(fmt.Sprintf("/all/slow?sleep=%s", sleep)), headed)
			done <- result{r, err}
		}()
		<-headed // the worker set is taken
		killed, frozen := workers["bc-2"], workers["bc-3"]
		hit := time.Now()
		rtKill(t, killed)
		if err := syscall.Kill(frozen.cmd.Process.Pid, syscall.SIGSTOP); err != nil {
			t.Fatalf("SIGSTOP: %v", err)
		}
		defer func() { _ = syscall.Kill(frozen.cmd.Process.Pid, syscall.SIGCONT) }()
		var res result
		select {
		case res = <-done:
		case <-time.After(timeout + requestTimeout):
			t.Fatal("the broadcast did not end")
		}
		ended := time.Since(hit)
		if res.err != nil {
			t.Fatal(res.err)
		}
		for _, l := range res.r.lines {
			t.Logf("%8v %-9s %s %s", l.at.Round(time.Millisecond), l.Type, l.Worker, l.Error)
		}
		sum, ok := res.r.summary()
		if !ok {
			t.Fatalf("no summary line last")
		}
		answers, failures := res.r.ofType("answer"), res.r.ofType("failed")
		var answeredBy, failedBy []string
		for _, l := range answers {
			answeredBy = append(answeredBy, l.Worker)
		}
		for _, l := range failures {
			failedBy = append(failedBy, l.Worker)
		}
		slices.Sort(answeredBy)
		slices.Sort(failedBy)
		if !slices.Equal(answeredBy, []string{"bc-1", "bc-4"}) || !slices.Equal(failedBy, []string{"bc-2", "bc-3"}) ||
			len(res.r.lines) != 5 {
			t.Errorf("answered by %v, failed %v, %d lines; want answers of bc-1 and bc-4, failures of bc-2 and bc-3", answeredBy, failedBy, len(res.r.lines))
		}
		if sum.Asked != 4 || sum.Answered != 2 || sum.Failed != 2 || sum.TimedOut != 0 {
			t.Errorf("summary %+v", sum)
		}
		// Failures come from the control channel's liveness detection, not
		// from the broadcast's timeout.
		if ended >= timeout/2 {
			t.Errorf("the broadcast ended %v after the kill; its timeout is %v", ended, timeout)
		}
		t.Logf("ended %v after the kill and freeze (answers sleep %v, timeout %v)", ended.Round(time.Millisecond), sleep, timeout)
	})
}
