package main

import (
	"fmt"
	"io"
	"text/tabwriter"
)

// The cost goals compare CPU time per request, per process, within one run,
// which other load disturbs far less than requests/s:
//
//   - Caddy's CPU per `zmq` request minus its CPU per `respond` request: what
//     the module adds to a Caddy that answers by itself.
//   - workerkit hello's CPU per request over the floor worker's
//     (bin/floor-worker: one loop, recv, format, send) behind the same front
//     end: what workerkit adds to the least a Go worker must do.
//
// Each goal has a reference printed below it, the same figure for the least
// any Go program doing the job can do, so that what the design costs can be
// told from what the runtime, libzmq and the machine cost:
//
//   - bin/frontfloor's CPU per request bridging to the floor worker minus
//     its CPU per request answering by itself: what the least Go net/http
//     front end on libzmq adds (integration/frontfloor);
//   - the floor worker's CPU per request when it answers through a
//     net/http Handler (-handler) over its own: what serving a Handler
//     costs at the least, which workerkit must do.

// Process names in the stacks: the floor worker, the same answering
// through a net/http Handler, and the least Go front end.
const (
	floorProcess        = "floor-worker"
	floorHandlerProcess = "floor-worker (handler)"
	frontFloorProcess   = "frontfloor"
)

// frontEndProcs are the process names of front ends; every other process of
// a hello case is its worker.
var frontEndProcs = map[string]bool{"caddy": true, "mongrel2": true, frontFloorProcess: true}

const (
	// goalModuleMaxUS: Caddy's µs per `zmq` request beyond `respond`'s.
	goalModuleMaxUS = 25.0
	// goalWorkerkitMaxRatio: workerkit hello's CPU per request over the
	// floor worker's behind the same front end.
	goalWorkerkitMaxRatio = 1.15
)

// goals computes the cost goals from the HTTP cases, each followed by its
// reference; a line whose cases were not selected (-cases) is left out, one
// whose cases have no figure is n/a (a goal) or "-" (a reference).
func (rep *Report) goals() []Check {
	var out []Check
	// add appends a goal (at most target) or, with Status "ref", a
	// reference, which has no target.
	add := func(ck Check, ok bool, target float64) {
		switch {
		case !ok && ck.Status == "ref":
			ck.Shown = "-"
		case !ok:
			ck.Shown, ck.Status = "-", "n/a"
		case ck.Status != "ref":
			ck.Status = passMiss(ck.Value <= target)
		}
		out = append(out, ck)
	}
	if z, resp := rep.find("HTTP", "zmq"), rep.find("HTTP", "respond"); z != nil && resp != nil {
		ck := Check{Group: "HTTP", Name: "caddy cpu/req: zmq - respond", Target: fmt.Sprintf("<= %.0f µs", goalModuleMaxUS)}
		ok := ck.cpuDifference(z, resp, "caddy")
		add(ck, ok, goalModuleMaxUS)
	}
	if ff, ffr := rep.find("HTTP", "frontfloor"), rep.find("HTTP", "frontfloor-respond"); ff != nil && ffr != nil {
		ck := Check{Group: "HTTP", Name: "reference: frontfloor cpu/req: bridge - respond", Target: "-", Status: "ref"}
		ok := ck.cpuDifference(ff, ffr, frontFloorProcess)
		if spin := rep.Params.FrontFloorSpinUS; ok && spin > 0 {
			ck.Shown += fmt.Sprintf(", spinning %gµs", spin)
		}
		add(ck, ok, 0)
	}
	for _, fe := range []struct{ name, kit, handler, floor string }{
		{"caddy zmq", "zmq", "zmq+floor-handler", "zmq+floor"},
		{"mongrel2", "mongrel2", "mongrel2+floor-handler", "mongrel2+floor"},
	} {
		floor := rep.find("HTTP", fe.floor)
		if floor == nil {
			continue
		}
		if kit := rep.find("HTTP", fe.kit); kit != nil {
			ck := Check{Group: "HTTP", Name: "worker cpu/req: workerkit / floor, behind " + fe.name,
				Target: fmt.Sprintf("<= %.2f", goalWorkerkitMaxRatio)}
			add(ck, ck.workerRatio(kit, floor), goalWorkerkitMaxRatio)
		}
		if fh := rep.find("HTTP", fe.handler); fh != nil {
			ck := Check{Group: "HTTP", Name: "reference: floor with a Handler / floor, behind " + fe.name, Target: "-", Status: "ref"}
			add(ck, ck.workerRatio(fh, floor), 0)
		}
	}
	return out
}

// cpuDifference sets ck to a's CPU per request of process proc minus b's;
// false when either figure is missing.
func (ck *Check) cpuDifference(a, b *CaseReport, proc string) bool {
	ac, ok1 := caseProcCPU(a, proc)
	bc, ok2 := caseProcCPU(b, proc)
	if !ok1 || !ok2 {
		return false
	}
	ck.Value = ac - bc
	ck.Shown = fmt.Sprintf("%.1f µs (%.1f - %.1f)", ck.Value, ac, bc)
	ck.Note = goalNote(a, b)
	return true
}

// workerRatio sets ck to num's worker CPU per request over den's; false
// when either figure is missing.
func (ck *Check) workerRatio(num, den *CaseReport) bool {
	n, ok1 := caseWorkerCPU(num)
	d, ok2 := caseWorkerCPU(den)
	if !ok1 || !ok2 {
		return false
	}
	ck.Value = n / d
	ck.Shown = fmt.Sprintf("%.2f (%.1f / %.1f µs)", ck.Value, n, d)
	ck.Note = goalNote(num, den)
	return true
}

// caseProcCPU is a case's median CPU per request of the named process; false
// when the case has no successful run or no such figure.
func caseProcCPU(c *CaseReport, name string) (float64, bool) {
	us, ok := c.CPUByProc[name]
	return us, c.OK > 0 && ok && us > 0
}

// caseWorkerCPU is a case's median CPU per request of its processes other than
// the front end (the worker); false when unknown.
func caseWorkerCPU(c *CaseReport) (float64, bool) {
	if c.OK == 0 {
		return 0, false
	}
	sum, n := 0.0, 0
	for name, us := range c.CPUByProc {
		if !frontEndProcs[name] {
			sum += us
			n++
		}
	}
	return sum, n > 0 && sum > 0
}

// goalNote says why a goal's figure may not be trusted: errors or failed
// runs, or other processes busy (CPU per request suffers less from them than
// requests/s does, but not nothing).
func goalNote(cs ...*CaseReport) string {
	noisy := 0.0
	for _, c := range cs {
		if c.Flagged {
			return "unreliable: errors/failures in " + c.Name
		}
		noisy = max(noisy, c.OtherCPU)
	}
	if noisy > noisyPercent {
		return fmt.Sprintf("noisy: other processes used up to %.0f%% CPU", noisy)
	}
	return ""
}

// printGoals prints the goals table, if any goal's cases were run.
func printGoals(w io.Writer, goals []Check) {
	if len(goals) == 0 {
		return
	}
	fmt.Fprintln(w, "\nCost goals (CPU per request, medians, this run):")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "group\tgoal\tvalue\ttarget\tresult\t")
	for _, g := range goals {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", g.Group, g.Name, g.Shown, g.Target, g.Status, g.Note)
	}
	tw.Flush()
}
