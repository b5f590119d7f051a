package integration

// Multi-host routing with Linux network namespaces: workers on two "hosts"
// (namespaces joined to this one by veth pairs), a host cut off the network
// while sessions pinned to its workers are loaded.

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// netLab is two network namespaces, "hosts" h1 and h2, each joined to this
// namespace by a veth pair on its own /30 of 10.231.0.0/16:
//
//	this namespace  hostIf[i] hostIP[i] (10.231.N+i.1)  <->  nsIP[i] (10.231.N+i.2) in ns[i]
//
// Each host's default route points at its hostIP. This namespace answers
// for all of its addresses on every interface (Linux's weak host model), so
// a host reaches any hostIP through its own link, and a host whose link is
// down reaches nothing.
type netLab struct {
	ns     [2]string
	hostIf [2]string
	hostIP [2]string
	nsIP   [2]string
	// workerArgs, when set, adds flags to each worker (CURVE keys).
	workerArgs func(name string) []string
}

var netLabName = regexp.MustCompile(`^zmqit-([0-9]+)-h[12]$`)

// newNetLab builds the lab, or skips the test when namespaces cannot be made
// here. Names carry the test process's PID, so parallel runs do not collide;
// everything is removed in t.Cleanup, even when the test fails (register the
// lab before starting processes in it, so that they are stopped first).
func newNetLab(t *testing.T) *netLab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skipf("no ip command (iproute2): %v", err)
	}
	removeStaleNetLabs(t)
	pid := os.Getpid()
	lab := &netLab{}
	for i := range 2 {
		lab.ns[i] = fmt.Sprintf("zmqit-%d-h%d", pid, i+1)
		lab.hostIf[i] = fmt.Sprintf("zq%dh%d", pid, i+1) // at most 11 bytes; the peer adds "p" (IFNAMSIZ 16)
	}
	// Two free /30s: 10.231.N.0 and 10.231.N+1.0, N even, from the PID.
	addrs, err := rtRun("ip", "-4", "-o", "addr", "show")
	if err != nil {
		t.Skipf("cannot list addresses: %v", err)
	}
	base := -1
	for k := 0; k < 124; k++ {
		n := ((pid + k) % 124) * 2
		if !strings.Contains(addrs, fmt.Sprintf(" 10.231.%d.", n)) && !strings.Contains(addrs, fmt.Sprintf(" 10.231.%d.", n+1)) {
			base = n
			break
		}
	}
	if base < 0 {
		t.Fatalf("no free 10.231.N.0/30 pair for the lab:\n%s", addrs)
	}
	for i := range 2 {
		lab.hostIP[i] = fmt.Sprintf("10.231.%d.1", base+i)
		lab.nsIP[i] = fmt.Sprintf("10.231.%d.2", base+i)
	}

	if _, err := rtRun("ip", "netns", "add", lab.ns[0]); err != nil {
		t.Skipf("cannot create a network namespace here: %v", err)
	}
	t.Cleanup(func() { lab.remove(t) })
	for i := range 2 {
		ns, hif, peer := lab.ns[i], lab.hostIf[i], lab.hostIf[i]+"p"
		steps := [][]string{
			{"link", "add", hif, "type", "veth", "peer", "name", peer},
			{"link", "set", peer, "netns", ns},
			{"addr", "add", lab.hostIP[i] + "/30", "dev", hif},
			{"link", "set", hif, "up"},
			{"-n", ns, "addr", "add", lab.nsIP[i] + "/30", "dev", peer},
			{"-n", ns, "link", "set", peer, "up"},
			{"-n", ns, "link", "set", "lo", "up"},
			{"-n", ns, "route", "add", "default", "via", lab.hostIP[i]},
		}
		if i == 1 {
			steps = append([][]string{{"netns", "add", ns}}, steps...)
		}
		for _, s := range steps {
			if _, err := rtRun("ip", s...); err != nil {
				t.Fatalf("setting up host h%d: %v", i+1, err)
			}
		}
	}
	t.Logf("hosts: h1 %s (%s, link %s), h2 %s (%s, link %s)", lab.ns[0], lab.nsIP[0], lab.hostIf[0], lab.ns[1], lab.nsIP[1], lab.hostIf[1])
	return lab
}

// remove deletes the veths (with their peers) and the namespaces.
func (lab *netLab) remove(t testing.TB) {
	for i := range 2 {
		if lab.hostIf[i] != "" {
			if out, err := rtRun("ip", "link", "del", lab.hostIf[i]); err != nil && !strings.Contains(out, "Cannot find device") {
				t.Logf("cleanup: %v", err)
			}
		}
		if lab.ns[i] != "" {
			if out, err := rtRun("ip", "netns", "del", lab.ns[i]); err != nil && !strings.Contains(out, "No such file") {
				t.Logf("cleanup: %v", err)
			}
		}
	}
}

// removeStaleNetLabs removes labs left by test processes that no longer
// exist (killed before their cleanup ran). Only names this file makes.
func removeStaleNetLabs(t *testing.T) {
	out, err := rtRun("ip", "netns", "list")
	if err != nil {
		return
	}
	for _, line := range strings.Split(out, "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		m := netLabName.FindStringSubmatch(fields[0])
		if m == nil {
			continue
		}
		pid, _ := strconv.Atoi(m[1])
		if pid == os.Getpid() || !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
			continue
		}
		host := fields[0][len(fields[0])-2:]
		t.Logf("removing %s, left by process %d", fields[0], pid)
		_, _ = rtRun("ip", "link", "del", fmt.Sprintf("zq%d%s", pid, host))
		_, _ = rtRun("ip", "netns", "del", fields[0])
	}
}

// startInNetns runs bin/testworker inside host i's namespace.
func (lab *netLab) startWorker(t *testing.T, i int, name string, frontEnds ...string) *process {
	t.Helper()
	args := []string{"netns", "exec", lab.ns[i], testworkerBin(t), "-name", name}
	for _, fe := range frontEnds {
		args = append(args, "-frontend", fe)
	}
	if lab.workerArgs != nil {
		args = append(args, lab.workerArgs(name)...)
	}
	cmd := exec.Command("ip", args...)
	cmd.Dir = t.TempDir()
	return startProcess(t, name, cmd)
}

// TestNetnsAffinityFailover: caddyfiles/affinity.Caddyfile with Caddy's
// three endpoints bound on h2's host-side address; two testworkers on each
// of two hosts (namespaces) connect to them, h1's through its own link.
// Sessions are pinned to workers of both hosts, then loaded (each session
// one request after another) while h1 is cut off: its link is set down on
// this side. The h1 workers keep running, but cannot be reached:
//   - every request completes (200 or not) within reply_timeout + 4s: none
//     hangs on a worker that is gone;
//   - no request fails: the ones h1 held are re-sent (idempotent GETs);
//   - each session pinned to h1 moves to an h2 worker and stays there;
//   - sessions pinned to h2 keep their worker throughout;
//   - Caddy reports exactly the h1 workers lost.
func TestNetnsAffinityFailover(t *testing.T) {
	caddyBin(t)
	testworkerBin(t)
	lab := newNetLab(t)

	const replyTimeout = 6 * time.Second
	const margin = 4 * time.Second
	ports := freePorts(t, 3)
	ep := func(p int) string { return fmt.Sprintf("tcp://%s:%d", lab.hostIP[1], p) }
	// Across hosts, as in production: CURVE on every socket, each worker
	// with a key of its own (curve_test.go).
	keyDir := t.TempDir()
	c := startCaddy(t, caddyOpts{Config: withCurve(t, "caddyfiles/affinity.Caddyfile", keyDir), Env: map[string]string{
		"ZMQ_REQUESTS":  ep(ports[0]),
		"ZMQ_REPLIES":   ep(ports[1]),
		"ZMQ_CONTROL":   ep(ports[2]),
		"REPLY_TIMEOUT": replyTimeout.String(),
	}})
	fe := rtFrontEnd(ep(ports[0]), ep(ports[1]), ep(ports[2]))
	lab.workerArgs = curveWorkerKeys(t, c, keyDir)
	hostOf := map[string]int{}
	var workers []*process
	var names []string
	for i := range 2 {
		for _, s := range []string{"a", "b"} {
			name := fmt.Sprintf("h%d-%s", i+1, s)
			workers = append(workers, lab.startWorker(t, i, name, fe))
			names = append(names, name)
			hostOf[name] = i
		}
	}
	client := c.Client(modeHTTP)
	t.Cleanup(client.CloseIdleConnections)
	rtWaitWorkers(t, client, c.HTTPURL("/ready"), names, append(workers, c.proc)...)
	workerIDs := map[string]string{} // worker id (wk-...) -> name
	for i, w := range workers {
		if m := regexp.MustCompile(`id=(wk-[0-9a-f]+)`).FindStringSubmatch(w.out.String()); m != nil {
			workerIDs[m[1]] = names[i]
		}
	}

	// Pin sessions: a session's worker is the one that answers it three
	// times in a row (TestAffinityCookie checks the very first request).
	const sessions = 16
	url := c.HTTPURL("/netns/{tok}?sleep=10ms")
	cookie := func(s int) http.Header {
		return http.Header{"Cookie": {fmt.Sprintf("session=netns-%d-%d", os.Getpid(), s)}}
	}
	pins := make([]string, sessions)
	onHost := [2]int{}
	for s := range pins {
		streak, last := 0, ""
		for try := 0; streak < 3; try++ {
			if try == 20 {
				t.Fatalf("session %d: no worker answered it 3 times in a row in 20 requests", s)
			}
			h := rtSend(client, http.MethodGet, url, "", cookie(s), requestTimeout)
			if !h.ok() {
				t.Fatalf("session %d before the cut: %v", s, h)
			}
			if h.Worker == last {
				streak++
			} else {
				streak, last = 1, h.Worker
			}
		}
		pins[s] = last
		onHost[hostOf[last]]++
	}
	t.Logf("sessions pinned: %v (h1: %d, h2: %d)", pins, onHost[0], onHost[1])
	if onHost[0] == 0 || onHost[1] == 0 {
		t.Fatalf("sessions pinned to one host only (h1: %d, h2: %d): nothing to fail over", onHost[0], onHost[1])
	}

	clients := make([]*http.Client, sessions)
	for s := range clients {
		clients[s] = c.Client(modeHTTP)
		t.Cleanup(clients[s].CloseIdleConnections)
	}
	l := rtStartLoad(sessions, 2*time.Minute, func(s, n int) rtHit {
		h := rtSend(clients[s], http.MethodGet, url, "", cookie(s), replyTimeout+margin+10*time.Second)
		h.Tag = strconv.Itoa(s)
		return h
	})
	defer l.stop()
	l.waitUntil(t, startTimeout, "load before the cut", func(hits []rtHit) error {
		if len(hits) < 5*sessions {
			return fmt.Errorf("%d requests done", len(hits))
		}
		return nil
	})

	if _, err := rtRun("ip", "link", "set", lab.hostIf[0], "down"); err != nil {
		t.Fatalf("cutting h1 off: %v", err)
	}
	cut := time.Now()
	t.Logf("h1 cut off (%s down)", lab.hostIf[0])

	// settled: for each session, the index in its hits (after the cut)
	// from which it has been answered 5 times in a row by one h2 worker.
	const settle = 5
	settledOn := func(hits []rtHit) (map[int]string, error) {
		on := map[int]string{}
		streak := map[int]int{}
		last := map[int]string{}
		for _, h := range hits {
			if h.Start.Before(cut) {
				continue
			}
			s, _ := strconv.Atoi(h.Tag)
			if !h.ok() || hostOf[h.Worker] != 1 || h.Worker != last[s] {
				streak[s], last[s] = 0, ""
			}
			if h.ok() && hostOf[h.Worker] == 1 {
				streak[s]++
				last[s] = h.Worker
				if streak[s] >= settle && on[s] == "" {
					on[s] = h.Worker
				}
			}
		}
		for s := range pins {
			if on[s] == "" {
				return on, fmt.Errorf("session %d (was on %s): %d answers in a row from one h2 worker", s, pins[s], streak[s])
			}
		}
		return on, nil
	}
	l.waitUntil(t, 30*time.Second, "every session answered by h2 after the cut", func(hits []rtHit) error {
		_, err := settledOn(hits)
		return err
	})
	settleTime := time.Since(cut)
	hits := l.stop()

	for i, w := range workers {
		if hostOf[names[i]] == 0 && w.Exited() {
			t.Errorf("%s exited (%v): the cut was to leave it running, unreachable", names[i], w.err)
		}
	}

	// 1. Nothing hangs.
	var slow []string
	var slowest time.Duration
	for _, h := range hits {
		slowest = max(slowest, h.Dur)
		if h.Dur > replyTimeout+margin {
			slow = append(slow, h.String())
		}
	}
	if len(slow) > 0 {
		t.Errorf("%d requests took longer than reply_timeout %v + %v:\n%s", len(slow), replyTimeout, margin, strings.Join(slow[:min(len(slow), 20)], "\n"))
	}
	// 2. Nothing fails.
	rtReportFailures(t, "cutting h1 off", len(hits), rtFailures(hits))
	// 3 and 4. Where every session went, and that it stayed.
	on, _ := settledOn(hits)
	var moveTime time.Duration // cut -> first h2 answer, slowest moved session
	for s := range pins {
		var after []rtHit
		for _, h := range hits {
			if h.Tag == strconv.Itoa(s) && h.Start.After(cut) {
				after = append(after, h)
			}
		}
		if hostOf[pins[s]] == 1 {
			for _, h := range after {
				if h.ok() && h.Worker != pins[s] {
					t.Errorf("session %d, pinned to %s on h2, was answered by %s after the cut: %v", s, pins[s], h.Worker, h)
					break
				}
			}
			continue
		}
		// Moved: once settled on an h2 worker, never elsewhere.
		seen, first := 0, time.Duration(0)
		for _, h := range after {
			if first == 0 && h.ok() && hostOf[h.Worker] == 1 {
				first = h.Start.Add(h.Dur).Sub(cut)
			}
			if h.Worker == on[s] {
				seen++
			} else if seen >= settle {
				t.Errorf("session %d moved from %s to %s and then on to %s: %v", s, pins[s], on[s], h.Worker, h)
				break
			}
		}
		moveTime = max(moveTime, first)
	}
	// 5. Caddy saw exactly h1's workers go.
	lost := map[string]bool{}
	for _, line := range rtLogLines(c.proc, "worker lost") {
		for id, name := range workerIDs {
			if strings.Contains(line, id) {
				lost[name] = true
			}
		}
	}
	for _, n := range names {
		if lost[n] != (hostOf[n] == 0) {
			t.Errorf("worker %s (h%d) reported lost by Caddy: %v", n, hostOf[n]+1, lost[n])
		}
	}
	per := rtCountBy(hits, func(h rtHit) string {
		if h.Start.Before(cut) {
			return "before/" + h.Worker
		}
		return "after/" + h.Worker
	})
	t.Logf("%d requests; h1's sessions first answered by h2 within %v of the cut, all settled within %v; slowest request %v; answers: %s",
		len(hits), moveTime.Round(time.Millisecond), settleTime.Round(time.Millisecond), slowest.Round(time.Millisecond), rtFmtCounts(per))
}
