package main

import (
	"context"
	"fmt"
	"syscall"
	"time"
)

// scenario is one fault, injected into a running cluster while the load
// runs. inject returns when it is done (at the latest at the end of the
// load); it records what it did in the run.
type scenario struct {
	key    string
	title  string
	detect string // what the "detect" column measures for it
	// undetected: the detect column when, by design, nothing is detected.
	undetected string
	inject     func(ctx context.Context, c *cluster, run *scenarioRun) error
}

// injection is one fault: when, on which worker incarnation.
type injection struct {
	at     time.Time
	victim string
	// until: the fault's end (SIGCONT; a restart's replacement joined).
	until time.Time
}

var scenarios = []scenario{
	{
		key: "kill", title: "SIGKILL a worker every 2 s",
		detect: `SIGKILL -> Caddy's "worker lost"`,
		inject: injectKill,
	},
	{
		key: "freeze", title: "SIGSTOP a worker, SIGCONT 10 s later (less in short runs)",
		detect: `SIGSTOP -> Caddy's "worker lost"`,
		inject: injectFreeze,
	},
	{
		key: "restart", title: "rolling restart (SIGTERM, drain, start)",
		detect: `SIGTERM -> Caddy's "worker left after draining"`,
		inject: injectRestart,
	},
	{
		key: "hung", title: "a worker accepts and never answers",
		detect: `hung -> Caddy's "worker hung" (hung_timeout)`,
		inject: injectHung,
	},
}

// sleepUntil sleeps until t; false if ctx ended first.
func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// injectKill: every KillEvery, SIGKILL the next worker in turn and start a
// replacement right away, so that Workers stay up. The last kill leaves 2 s
// of load to see its effects through.
func injectKill(ctx context.Context, c *cluster, run *scenarioRun) error {
	end := run.t0.Add(run.duration - 2*time.Second)
	at := run.t0.Add(time.Second)
	for k := 0; at.Before(end); k++ {
		if !sleepUntil(ctx, at) {
			return nil
		}
		slot := k % len(c.slots)
		victim := c.slots[slot]
		inj := injection{at: time.Now(), victim: victim.id}
		if err := victim.proc.signal(syscall.SIGKILL); err != nil {
			return err
		}
		victim.fault = "killed"
		if !victim.proc.wait(5 * time.Second) {
			return fmt.Errorf("%s still running 5 s after SIGKILL", victim.id)
		}
		if _, err := c.startWorker(slot); err != nil {
			return err
		}
		run.injections = append(run.injections, inj)
		at = at.Add(c.o.KillEvery)
	}
	return nil
}

// injectFreeze: SIGSTOP one worker for FreezeFor (less in short runs), then
// SIGCONT.
func injectFreeze(ctx context.Context, c *cluster, run *scenarioRun) error {
	lead := 5 * time.Second
	if run.duration < 20*time.Second {
		lead = run.duration / 5
	}
	freeze := min(c.o.FreezeFor, run.duration-lead-2*time.Second)
	victim := c.slots[0]
	if !sleepUntil(ctx, run.t0.Add(lead)) {
		return nil
	}
	inj := injection{at: time.Now(), victim: victim.id}
	if err := victim.proc.signal(syscall.SIGSTOP); err != nil {
		return err
	}
	victim.fault = "frozen"
	run.note("frozen for %v", freeze.Round(time.Millisecond))
	ok := sleepUntil(ctx, inj.at.Add(freeze))
	err := victim.proc.signal(syscall.SIGCONT)
	inj.until = time.Now()
	run.injections = append(run.injections, inj)
	if !ok {
		return nil
	}
	return err
}

// injectRestart: restart the workers one after the other, in a loop: SIGTERM
// (the worker says BYE, stops taking work, finishes what it holds, exits),
// start a replacement, wait until it has joined, pause RestartGap, next.
func injectRestart(ctx context.Context, c *cluster, run *scenarioRun) error {
	end := run.t0.Add(run.duration - 2*time.Second)
	if !sleepUntil(ctx, run.t0.Add(time.Second)) {
		return nil
	}
	for k := 0; time.Now().Before(end); k++ {
		slot := k % len(c.slots)
		victim := c.slots[slot]
		inj := injection{at: time.Now(), victim: victim.id}
		if err := victim.proc.signal(syscall.SIGTERM); err != nil {
			return err
		}
		victim.fault = "restarted"
		if !victim.proc.wait(stopTimeout) {
			victim.stopKilled = true
			run.note("%s did not exit within %v of SIGTERM: SIGKILL", victim.id, stopTimeout)
			victim.proc.stop(0)
		}
		run.drains = append(run.drains, time.Since(inj.at))
		from := c.events.len()
		inc, err := c.startWorker(slot)
		if err != nil {
			return err
		}
		if err := c.waitJoined(ctx, inc, from); err != nil {
			return err
		}
		inj.until = time.Now()
		run.injections = append(run.injections, inj)
		if !sleepUntil(ctx, time.Now().Add(c.o.RestartGap)) {
			return nil
		}
	}
	return nil
}

// injectHung: one worker goes hung (SIGUSR1 toggles the chaosworker's hung
// mode): it keeps taking requests and acknowledging them, and answers none.
// It stays so until the load is over, then is toggled back so that the
// check that Caddy still answers does not wait on it.
func injectHung(ctx context.Context, c *cluster, run *scenarioRun) error {
	lead := 2 * time.Second
	if run.duration < 20*time.Second {
		lead = time.Second
	}
	victim := c.slots[0]
	if !sleepUntil(ctx, run.t0.Add(lead)) {
		return nil
	}
	inj := injection{at: time.Now(), victim: victim.id}
	if err := victim.proc.signal(syscall.SIGUSR1); err != nil {
		return err
	}
	victim.fault = "hung"
	run.injections = append(run.injections, inj)
	run.after = func() {
		_ = victim.proc.signal(syscall.SIGUSR1)
	}
	return nil
}
