package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// pinnedAnswer is what bin/pinned-worker answers (workerkit/examples/pinned).
type pinnedAnswer struct {
	Worker    string `json:"worker"`
	PID       int    `json:"pid"`
	TID       int    `json:"tid"`
	Session   string `json:"session"`
	Pinned    bool   `json:"pinned"`
	Fresh     bool   `json:"fresh"`
	Count     int64  `json:"count"`
	Broadcast bool   `json:"broadcast"`
}

func pinnedWorkerBin(t testing.TB) string {
	return needFile(t, repoPath("bin", "pinned-worker"), "run make build")
}

// startPinnedWorker runs bin/pinned-worker with id and extra flags.
func startPinnedWorker(t testing.TB, id, frontEnd string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(pinnedWorkerBin(t), append([]string{"-id", id, "-frontend", frontEnd}, args...)...)
	cmd.Dir = t.TempDir()
	return startProcess(t, id, cmd)
}

// pinnedGet sends GET path for session (none if "") and decodes the answer
// of a 200.
func pinnedGet(client *http.Client, url, session string) (int, pinnedAnswer, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, pinnedAnswer{}, err
	}
	if session != "" {
		req.Header.Set("X-Session", session)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, pinnedAnswer{}, err
	}
	defer resp.Body.Close()
	var a pinnedAnswer
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
			return resp.StatusCode, a, fmt.Errorf("decoding the answer: %w", err)
		}
	}
	return resp.StatusCode, a, nil
}

// taskExists reports whether thread tid of process pid is alive.
func taskExists(pid, tid int) bool {
	_, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid), "task", strconv.Itoa(tid)))
	return err == nil
}

// taskCount counts the threads of process pid.
func taskCount(t testing.TB, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "task"))
	if err != nil {
		t.Fatalf("threads of %d: %v", pid, err)
	}
	return len(ents)
}

// waitPinnedWorkers polls until each worker in ids has answered a request
// (each poll is a session of its own, so the front end balances it).
func waitPinnedWorkers(t testing.TB, client *http.Client, url string, ids []string, procs ...*process) {
	t.Helper()
	seen := map[string]bool{}
	n := 0
	err := poll(startTimeout, anyExited(procs), func() error {
		n++
		st, a, err := pinnedGet(client, url, fmt.Sprintf("ready-%d-%d", os.Getpid(), n))
		if err == nil && st == http.StatusOK {
			seen[a.Worker] = true
		}
		for _, id := range ids {
			if !seen[id] {
				return fmt.Errorf("not seen yet: %s (status %d, err %v)", id, st, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("workers behind %s: %v", url, err)
	}
}

// TestPinnedSessions: caddyfiles/pinned.Caddyfile (affinity header
// X-Session) in front of three bin/pinned-worker processes. 100 sessions
// send 50 requests each, concurrently: every request of a session is
// answered by the same worker on the same OS thread, whose C thread-local
// counter counts exactly the session's requests (so no other request ran on
// it); only the first is fresh; no two sessions share a thread. Once the
// sessions are idle past the workers' -idle, every session thread is gone
// from /proc. A panic answers 500 and the session's next request is fresh,
// on a new thread. A SIGKILLed worker's session moves to another worker,
// fresh.
func TestPinnedSessions(t *testing.T) {
	c := startCaddy(t, caddyOpts{Config: "caddyfiles/pinned.Caddyfile", Endpoints: []string{"ZMQ_CONTROL"},
		Env: map[string]string{"REPLY_TIMEOUT": "20s"}})
	const idle = 3 * time.Second
	ids := []string{"pin-1", "pin-2", "pin-3"}
	workers := map[string]*process{}
	var procs []*process
	for _, id := range ids {
		p := startPinnedWorker(t, id, c.controlFrontEnd(), "-max-threads", "100", "-idle", idle.String())
		workers[id] = p
		procs = append(procs, p)
	}
	procs = append(procs, c.proc)
	client := c.Client(modeHTTP)
	t.Cleanup(client.CloseIdleConnections)
	url := c.HTTPURL("/")
	waitPinnedWorkers(t, client, url, ids, procs...)

	const sessions, perSession = 100, 50
	type sessionLog struct {
		key     string
		answers []pinnedAnswer
	}
	logs := make([]sessionLog, sessions)
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	for s := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := c.Client(modeHTTP)
			defer cl.CloseIdleConnections()
			key := fmt.Sprintf("sess-%d-%d", os.Getpid(), s)
			logs[s].key = key
			for j := range perSession {
				st, a, err := pinnedGet(cl, url, key)
				if err != nil || st != http.StatusOK {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("%s request %d: status %d, %v", key, j, st, err))
					mu.Unlock()
					return
				}
				logs[s].answers = append(logs[s].answers, a)
			}
		}()
	}
	wg.Wait()
	t.Logf("%d sessions x %d requests in %v", sessions, perSession, time.Since(start).Round(time.Millisecond))
	for _, f := range failures {
		t.Error(f)
	}
	if t.Failed() {
		t.FailNow()
	}

	type thread struct{ pid, tid int }
	owner := map[thread]string{}
	perWorker := map[string]int{}
	for _, l := range logs {
		first := l.answers[0]
		perWorker[first.Worker]++
		th := thread{first.PID, first.TID}
		if other, ok := owner[th]; ok {
			t.Errorf("sessions %s and %s share thread %d of %s", other, l.key, th.tid, first.Worker)
		}
		owner[th] = l.key
		for j, a := range l.answers {
			switch {
			case a.Worker != first.Worker || a.TID != first.TID:
				t.Errorf("%s request %d: worker %s thread %d, its first: worker %s thread %d", l.key, j, a.Worker, a.TID, first.Worker, first.TID)
			case !a.Pinned || a.Session != l.key:
				t.Errorf("%s request %d: not pinned to its session: %+v", l.key, j, a)
			case a.Fresh != (j == 0):
				t.Errorf("%s request %d: fresh %v", l.key, j, a.Fresh)
			case a.Count != int64(j+1):
				t.Errorf("%s request %d: the thread's counter is %d, want %d (another request ran on it, or it is not the session's thread)", l.key, j, a.Count, j+1)
			}
		}
	}
	t.Logf("sessions per worker: %v", perWorker)
	if len(perWorker) < 2 {
		t.Errorf("all sessions on one worker: %v", perWorker)
	}

	t.Run("idle sessions end with their threads", func(t *testing.T) {
		const runtimeThreadSlack = 3
		peak := map[string]int{}
		for _, id := range ids {
			peak[id] = taskCount(t, workers[id].cmd.Process.Pid)
		}
		err := poll(idle+requestTimeout, anyExited(procs), func() error {
			for th, key := range owner {
				if taskExists(th.pid, th.tid) {
					return fmt.Errorf("thread %d of session %s still exists", th.tid, key)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range ids {
			now := taskCount(t, workers[id].cmd.Process.Pid)
			t.Logf("%s: %d threads with its sessions live, %d once they idled out (%d sessions)", id, peak[id], now, perWorker[id])
			// The Go runtime may start a thread of its own meanwhile (a
			// processor handed off from a blocking cgo call, a GC
			// worker): a little slack, far below one thread per session.
			if now > peak[id]-perWorker[id]+runtimeThreadSlack {
				t.Errorf("%s: %d threads, want at most %d - %d (+%d)", id, now, peak[id], perWorker[id], runtimeThreadSlack)
			}
		}
	})

	t.Run("a panic answers 500 and the next request is fresh on a new thread", func(t *testing.T) {
		key := fmt.Sprintf("panic-%d", os.Getpid())
		st, before, err := pinnedGet(client, url, key)
		if err != nil || st != http.StatusOK {
			t.Fatalf("first request: %d %v", st, err)
		}
		st, _, err = pinnedGet(client, c.HTTPURL("/panic"), key)
		if err != nil || st != http.StatusInternalServerError {
			t.Fatalf("/panic: status %d, %v; want 500", st, err)
		}
		st, after, err := pinnedGet(client, url, key)
		if err != nil || st != http.StatusOK {
			t.Fatalf("after the panic: %d %v", st, err)
		}
		if !after.Fresh || after.Count != 1 || after.TID == before.TID || after.Worker != before.Worker {
			t.Errorf("after the panic: %+v; before: %+v (want fresh, count 1, same worker, new thread)", after, before)
		}
		err = poll(requestTimeout, anyExited(procs), func() error {
			if taskExists(before.PID, before.TID) {
				return fmt.Errorf("the panicked session's thread %d still exists", before.TID)
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	})

	t.Run("a killed worker's session goes on, fresh, on another", func(t *testing.T) {
		key := fmt.Sprintf("moved-%d", os.Getpid())
		st, before, err := pinnedGet(client, url, key)
		if err != nil || st != http.StatusOK {
			t.Fatalf("first request: %d %v", st, err)
		}
		pinnedGet(client, url, key) // a second: the session is pinned by now
		rtKill(t, workers[before.Worker])
		st, after, err := pinnedGet(client, url, key)
		if err != nil || st != http.StatusOK {
			t.Fatalf("after the kill: %d %v", st, err)
		}
		if after.Worker == before.Worker || !after.Fresh || after.Count != 1 {
			t.Errorf("after the kill: %+v; before: %+v (want another worker, fresh, count 1)", after, before)
		}
		st, again, err := pinnedGet(client, url, key)
		if err != nil || st != http.StatusOK || again.Worker != after.Worker || again.TID != after.TID || again.Fresh {
			t.Errorf("the moved session's next request: %d %v %+v, want %s thread %d, not fresh", st, err, again, after.Worker, after.TID)
		}
	})
}

// TestPinnedSessionsBounded: a worker with -max-threads 1 keeps its one
// session thread for session A; a new session B waits -wait, then gets 503
// with Retry-After through Caddy, while A goes on on its thread. Once A
// ends (its handler calls Session.End), B gets a thread.
func TestPinnedSessionsBounded(t *testing.T) {
	c := startCaddy(t, caddyOpts{Config: "caddyfiles/pinned.Caddyfile", Endpoints: []string{"ZMQ_CONTROL"},
		Env: map[string]string{"REPLY_TIMEOUT": "20s"}})
	w := startPinnedWorker(t, "pin-bounded", c.controlFrontEnd(), "-max-threads", "1", "-wait", "100ms", "-idle", "1h")
	client := c.Client(modeHTTP)
	t.Cleanup(client.CloseIdleConnections)
	a := fmt.Sprintf("a-%d", os.Getpid())
	var first pinnedAnswer
	err := poll(startTimeout, anyExited([]*process{w, c.proc}), func() error {
		st, ans, err := pinnedGet(client, c.HTTPURL("/"), a)
		if err != nil || st != http.StatusOK {
			return fmt.Errorf("status %d, %v", st, err)
		}
		first = ans
		return nil
	})
	if err != nil {
		t.Fatalf("session A: %v", err)
	}
	req, _ := http.NewRequest(http.MethodGet, c.HTTPURL("/"), nil)
	req.Header.Set("X-Session", fmt.Sprintf("b-%d", os.Getpid()))
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("session B past max-threads: status %d, Retry-After %q; want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	st, again, err := pinnedGet(client, c.HTTPURL("/end"), a)
	if err != nil || st != http.StatusOK || again.TID != first.TID || again.Fresh {
		t.Errorf("session A meanwhile: %d %v %+v, want its thread %d", st, err, again, first.TID)
	}
	// A's thread is freed once its /end returns: B gets it within -wait,
	// or on a later try.
	err = poll(requestTimeout, anyExited([]*process{w, c.proc}), func() error {
		st, b, err := pinnedGet(client, c.HTTPURL("/"), fmt.Sprintf("b-%d", os.Getpid()))
		if err != nil || st != http.StatusOK || !b.Fresh {
			return fmt.Errorf("session B: status %d, %v, %+v", st, err, b)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}
