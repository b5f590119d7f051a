package integration

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestChaosShort runs the fault-injection suite (integration/chaos) in short
// mode: 4 workers behind Caddy, each scenario (kill, freeze, rolling restart,
// hung worker) under GET and POST load for about 8 s. It runs only under
// ZMQ_INTEGRATION=1 (make test) and not with -short.
//
// It asserts only what must hold however slow the machine is: every fault
// detected (dead, frozen, drained, hung); no request executed twice, except
// a GET that Caddy logged a retry for after losing the worker that had
// started it (retries 1 allows exactly that); no reply
// delivered to the wrong request; Caddy still answering after every
// scenario; every process stopped. Failure counts, latencies and detection
// times are measurements: they are logged (the table), never asserted.
//
// A worker paused (SIGSTOP) after it started a request but before its ACK
// left the process used to get the request re-sent by Caddy at the dispatch
// deadline, so it ran twice; the liveness lease and the late-ACK rule
// (workerkit/lease.go) closed that, so allowAckRace is false: such a double
// fails the test. The suite counts them apart ("re-sent").
const allowAckRace = false

func TestChaosShort(t *testing.T) {
	if testing.Short() {
		t.Skip("the fault-injection suite takes about a minute")
	}
	if !integrationRequired() {
		t.Skip("set ZMQ_INTEGRATION=1 (make test) to run the fault-injection suite")
	}
	caddy := caddyBin(t)
	dir := t.TempDir()
	chaos := goBuild(t, dir, "chaos", "./integration/chaos")
	worker := goBuild(t, dir, "chaosworker", "./integration/chaosworker")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	jsonPath := filepath.Join(dir, "chaos.json")
	cmd := exec.CommandContext(ctx, chaos, "-short",
		"-caddy", caddy, "-worker", worker, "-config", repoPath("caddyfiles", "chaos.Caddyfile"),
		"-md", filepath.Join(dir, "chaos.md"), "-json", jsonPath, "-logs", filepath.Join(dir, "logs"))
	cmd.Dir = repoRoot
	cmd.WaitDelay = 30 * time.Second
	out, err := cmd.CombinedOutput()
	t.Logf("go run ./integration/chaos -short:\n%s", out)
	if err != nil {
		// Exit status 1: a scenario could not run, Caddy crashed or stopped
		// answering, a reply reached the wrong request, or a process was
		// left running (the output says which).
		t.Fatalf("chaos: %v", err)
	}

	var rep struct {
		Broken bool `json:"broken"`
		Runs   []struct {
			Scenario string    `json:"scenario"`
			Errors   []string  `json:"errors"`
			Detect   []float64 `json:"detect_seconds"`
			Get      struct {
				Sent             int `json:"sent"`
				ExecTwice        int `json:"exec_twice"`
				ExecTwiceRetried int `json:"exec_twice_retried"`
				ExecTwiceResent  int `json:"exec_twice_resent"`
				WrongBody        int `json:"wrong_body"`
			} `json:"get"`
			Post struct {
				Sent            int `json:"sent"`
				ExecTwice       int `json:"exec_twice"`
				ExecTwiceResent int `json:"exec_twice_resent"`
				WrongBody       int `json:"wrong_body"`
			} `json:"post"`
		} `json:"runs"`
	}
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("%s: %v", jsonPath, err)
	}
	// Every process the suite started ran in a directory under dir.
	if left := processesUnder(dir); len(left) > 0 {
		t.Errorf("processes left running: %v", left)
	}
	if len(rep.Runs) != 4 {
		t.Fatalf("%d scenarios reported, want 4", len(rep.Runs))
	}
	if rep.Broken {
		t.Error("the suite reports errors")
	}
	for _, r := range rep.Runs {
		for _, e := range r.Errors {
			t.Errorf("%s: %s", r.Scenario, e)
		}
		// Every fault must be noticed within the run (dead, frozen, hung,
		// drained); how fast is measured, not asserted.
		for i, d := range r.Detect {
			if d < 0 {
				t.Errorf("%s: fault %d was never detected by Caddy", r.Scenario, i+1)
			}
		}
		if r.Get.Sent == 0 || r.Post.Sent == 0 {
			t.Errorf("%s: no load (GET %d, POST %d sent)", r.Scenario, r.Get.Sent, r.Post.Sent)
		}
		getRace, postRace := r.Get.ExecTwiceResent, r.Post.ExecTwiceResent
		if getRace+postRace > 0 {
			t.Logf("%s: KNOWN RACE: executed twice after a dispatch re-send although a paused worker had started them: GET %d, POST %d",
				r.Scenario, getRace, postRace)
		}
		if !allowAckRace {
			getRace, postRace = 0, 0
		}
		if n := r.Post.ExecTwice - postRace; n != 0 {
			t.Errorf("%s: %d POST requests executed twice", r.Scenario, n)
		}
		if n := r.Get.ExecTwice - r.Get.ExecTwiceRetried - getRace; n != 0 {
			t.Errorf("%s: %d GET requests executed twice without a retry after a lost worker", r.Scenario, n)
		}
		if n := r.Get.WrongBody + r.Post.WrongBody; n != 0 {
			t.Errorf("%s: %d replies reached the wrong request", r.Scenario, n)
		}
	}
}

// processesUnder lists the processes (pid and command) whose working
// directory is inside dir.
func processesUnder(dir string) []string {
	var left []string
	pids, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range pids {
		cwd, err := os.Readlink(filepath.Join(p, "cwd"))
		if err != nil || (cwd != dir && !strings.HasPrefix(cwd, dir+string(filepath.Separator))) {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join(p, "cmdline"))
		left = append(left, filepath.Base(p)+" "+strings.ReplaceAll(string(cmdline), "\x00", " "))
	}
	return left
}

// goBuild builds pkg (relative to the repository) into dir/name.
func goBuild(t *testing.T, dir, name, pkg string) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out := filepath.Join(dir, name)
	cmd := exec.Command(goBin, "build", "-o", out, pkg)
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}
