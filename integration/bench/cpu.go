package main

import (
	"context"
	"os"
	"strconv"
	"strings"
	"time"
)

// The machine is often shared (builds, other tests). To tell a noisy run from
// a slow one, each run records how much of the machine's CPU went to
// processes other than the measured ones and wrk while wrk was measuring:
// the busy time from /proc/stat minus the CPU time of our own processes. It
// is an estimate (kernel work on our behalf that is not charged to a process
// counts as "other"); a few percent is normal, tens of percent mean the
// numbers are not comparable with a quiet machine's.

// cpuTicks reads the first line of /proc/stat: busy (user, nice, system,
// irq, softirq) and total ticks over all CPUs since boot.
func cpuTicks() (busy, total uint64, ok bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, 0, false
	}
	var v [7]uint64 // user nice system idle iowait irq softirq
	for i := range v {
		v[i], _ = strconv.ParseUint(f[i+1], 10, 64)
	}
	for _, s := range f[1:] { // includes steal, guest: total capacity
		n, _ := strconv.ParseUint(s, 10, 64)
		total += n
	}
	// guest time is also counted in user; it cannot happen here, ignore.
	return v[0] + v[1] + v[2] + v[5] + v[6], total, true
}

// procTicks is utime+stime of a process, in the same clock ticks.
func procTicks(pid int) uint64 { return taskTicks("/proc/" + strconv.Itoa(pid) + "/stat") }

// taskTicks is utime+stime from a /proc stat file (a process's or a thread's).
func taskTicks(path string) uint64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command name may contain spaces
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state)
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseUint(f[11], 10, 64) // field 14
	st, _ := strconv.ParseUint(f[12], 10, 64) // field 15
	return ut + st
}

// procSwitches is the number of times the threads of a process stopped
// running (voluntary and involuntary context switches, summed over
// /proc/PID/task/*/status). Per request, it counts the thread hand-offs
// a design costs: on a 2-core VM each is several µs of kernel time that
// is charged to nobody's user code.
func procSwitches(pid int) uint64 {
	var n uint64
	eachTask(pid, func(dir string) {
		b, err := os.ReadFile(dir + "/status")
		if err != nil {
			return // the thread exited meanwhile
		}
		for line := range strings.Lines(string(b)) {
			// voluntary_ctxt_switches and nonvoluntary_ctxt_switches
			if key, v, ok := strings.Cut(line, ":"); ok && strings.HasSuffix(key, "voluntary_ctxt_switches") {
				c, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
				n += c
			}
		}
	})
	return n
}

// eachTask calls f with the /proc directory of each thread of process pid.
func eachTask(pid int, f func(dir string)) {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, t := range tasks {
		f(dir + "/" + t.Name())
	}
}

// zmqIOTicks is the CPU time of a process's libzmq I/O threads (named
// "ZMQbg/IO/<n>" by libzmq), which do the TCP work of every ZeroMQ socket:
// it splits a process's cost per request between libzmq's own threads and
// the Go (or Mongrel2) code around them.
func zmqIOTicks(pid int) uint64 {
	var n uint64
	eachTask(pid, func(dir string) {
		if comm, err := os.ReadFile(dir + "/comm"); err == nil && strings.HasPrefix(string(comm), "ZMQbg/IO") {
			n += taskTicks(dir + "/stat")
		}
	})
	return n
}

// ticksPerSecond is USER_HZ, 100 on every Linux we run on.
const ticksPerSecond = 100

// cpuMeter splits the machine's CPU time between a start and now.
type cpuMeter struct {
	busy, total, own uint64
	procs            []uint64 // per process of the stack, in start order
	switches         []uint64 // the same processes' context switches
	zmqIO            []uint64 // their libzmq I/O threads' CPU (zmqIOTicks)
	ok               bool
}

func startCPUMeter(s *Stack) cpuMeter {
	busy, total, ok := cpuTicks()
	m := cpuMeter{busy: busy, total: total, own: s.ownTicks(), ok: ok}
	for _, p := range s.procs {
		m.procs = append(m.procs, procTicks(p.cmd.Process.Pid))
		m.switches = append(m.switches, procSwitches(p.cmd.Process.Pid))
		m.zmqIO = append(m.zmqIO, zmqIOTicks(p.cmd.Process.Pid))
	}
	return m
}

// cpuShares are percentages of the machine's CPU capacity during a run.
type cpuShares struct {
	Other float64 `json:"other_percent"` // processes other than ours and wrk
	Idle  float64 `json:"idle_percent"`  // nobody: the case did not use the whole machine
	Ours  float64 `json:"measured_percent"`
	Wrk   float64 `json:"wrk_percent"`
	// PerRequestUS is the measured processes' CPU time per request (µs),
	// which other processes disturb much less than requests/s.
	PerRequestUS float64 `json:"per_request_us"`
	// WrkPerRequestUS is wrk's CPU time per request (µs): on a machine
	// whose cores the load generator shares, part of every case's cost.
	WrkPerRequestUS float64 `json:"wrk_per_request_us"`
	// ByProcess splits PerRequestUS by process name (e.g. caddy, worker).
	ByProcess map[string]float64 `json:"per_request_us_by_process,omitempty"`
	// SwitchesByProcess is each process's context switches per request
	// (all its threads, libzmq's included).
	SwitchesByProcess map[string]float64 `json:"switches_per_request_by_process,omitempty"`
	// ZmqIOByProcess is the part of ByProcess spent in each process's
	// libzmq I/O threads (absent for processes without libzmq).
	ZmqIOByProcess map[string]float64 `json:"zmq_io_per_request_us_by_process,omitempty"`
}

// shares measures since start; wrkCPU is the CPU time wrk used meanwhile
// and requests the requests it made. All -1 when /proc is not available.
func (m cpuMeter) shares(s *Stack, wrkCPU time.Duration, requests int64) cpuShares {
	busy, total, ok := cpuTicks()
	if !m.ok || !ok || total <= m.total {
		return cpuShares{Other: -1, Idle: -1, Ours: -1, Wrk: -1, PerRequestUS: -1, WrkPerRequestUS: -1}
	}
	capacity := float64(total - m.total)
	// float: a process that died meanwhile takes its ticks with it.
	ours := max(0, float64(s.ownTicks())-float64(m.own))
	wrk := wrkCPU.Seconds() * ticksPerSecond
	b := float64(busy - m.busy)
	perReq, wrkPerReq := -1.0, -1.0
	var byProc, swByProc, ioByProc map[string]float64
	if requests > 0 {
		perReq = ours / ticksPerSecond * 1e6 / float64(requests)
		wrkPerReq = wrkCPU.Seconds() * 1e6 / float64(requests)
		byProc, swByProc, ioByProc = map[string]float64{}, map[string]float64{}, map[string]float64{}
		for i, p := range s.procs {
			if i < len(m.procs) {
				t := max(0, float64(procTicks(p.cmd.Process.Pid))-float64(m.procs[i]))
				byProc[p.Name] += t / ticksPerSecond * 1e6 / float64(requests)
				sw := max(0, float64(procSwitches(p.cmd.Process.Pid))-float64(m.switches[i]))
				swByProc[p.Name] += sw / float64(requests)
				if io := zmqIOTicks(p.cmd.Process.Pid); io > 0 {
					d := max(0, float64(io)-float64(m.zmqIO[i]))
					ioByProc[p.Name] += d / ticksPerSecond * 1e6 / float64(requests)
				}
			}
		}
	}
	return cpuShares{
		PerRequestUS:      perReq,
		WrkPerRequestUS:   wrkPerReq,
		ByProcess:         byProc,
		SwitchesByProcess: swByProc,
		ZmqIOByProcess:    ioByProc,
		Other:             100 * max(0, b-ours-wrk) / capacity,
		Idle:              100 * max(0, capacity-b) / capacity,
		Ours:              100 * ours / capacity,
		Wrk:               100 * wrk / capacity,
	}
}

// ownTicks is the CPU time of the stack's running processes and of the bench
// itself (which only waits for wrk meanwhile).
func (s *Stack) ownTicks() uint64 {
	t := procTicks(os.Getpid())
	for _, p := range s.procs {
		if p.Exited() == nil {
			t += procTicks(p.cmd.Process.Pid)
		}
	}
	return t
}

// waitQuiet waits, at most limit, for a second during which less than
// noisyPercent of the machine's CPU is busy (nothing of ours runs then).
// It returns the busy share of the last second sampled (-1: unknown) and
// whether the machine was quiet.
func waitQuiet(ctx context.Context, limit time.Duration) (float64, bool) {
	deadline := time.Now().Add(limit)
	for {
		b0, t0, ok0 := cpuTicks()
		select {
		case <-ctx.Done():
			return -1, false
		case <-time.After(time.Second):
		}
		b1, t1, ok1 := cpuTicks()
		if !ok0 || !ok1 || t1 <= t0 {
			return -1, false
		}
		busy := 100 * float64(b1-b0) / float64(t1-t0)
		if busy < noisyPercent {
			return busy, true
		}
		if time.Now().After(deadline) {
			return busy, false
		}
	}
}
