package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
)

// CURVE cases: the same setups as zmq and zmq+control with CurveZMQ on every
// socket (docs/security.md), side by side with the plaintext ones, so the
// price of encryption and authentication shows in the same run.

// curveSetup makes a front end keypair and one allowed worker key with
// `caddy zmq keygen` in the stack's directory. It returns the zmq block's
// curve option and the worker's flags.
func curveSetup(s *Stack, env *Env) (caddyOpt string, workerArgs []string, err error) {
	dir, err := s.Dir("curve-keys")
	if err != nil {
		return "", nil, err
	}
	frontEnd, workers := filepath.Join(dir, "frontend"), filepath.Join(dir, "workers")
	for _, out := range []string{frontEnd, filepath.Join(workers, "worker")} {
		if b, err := exec.Command(env.Caddy, "zmq", "keygen", "--out", out).CombinedOutput(); err != nil {
			return "", nil, fmt.Errorf("caddy zmq keygen: %v: %s", err, b)
		}
	}
	caddyOpt = fmt.Sprintf("\n\t\tcurve {\n\t\t\tsecret_key_file %s.key_secret\n\t\t\tallow_dir %s\n\t\t}", frontEnd, workers)
	workerArgs = []string{"-curve-server-key", frontEnd + ".key", "-curve-key", filepath.Join(workers, "worker.key_secret")}
	return caddyOpt, workerArgs, nil
}

// setupZmqCurve: zmq (no control channel) with CURVE on both sockets.
func setupZmqCurve(tls bool) func(context.Context, *Stack, *Env) (string, error) {
	return func(ctx context.Context, s *Stack, env *Env) (string, error) {
		opt, args, err := curveSetup(s, env)
		if err != nil {
			return "", err
		}
		p, err := freePorts(2)
		if err != nil {
			return "", err
		}
		req, rep := tcpEndpoint(p[0]), tcpEndpoint(p[1])
		url, err := startCaddy(s, env, tls, fmt.Sprintf("zmq %s %s {%s\n\t}", req, rep, opt))
		if err != nil {
			return "", err
		}
		_, err = s.Start("hello-worker (zmq+curve)", exec.Command(env.Hello, append([]string{"-frontend", req + "," + rep}, args...)...))
		return url, err
	}
}

// setupZmqControlEchoCurve: the large-body zmq+control setup with CURVE on
// all three sockets.
func setupZmqControlEchoCurve(ctx context.Context, s *Stack, env *Env) (string, error) {
	opt, args, err := curveSetup(s, env)
	if err != nil {
		return "", err
	}
	return setupZmqControlEchoOpts(ctx, s, env, opt, args)
}

// curveLargeCheck is the large-transfer price of CURVE in one direction:
// zmq+control+curve's MB/s over zmq+control's (target 0.7).
func curveLargeCheck(cases []LargeCaseReport, dir string) Check {
	var plain, curve *LargeCaseReport
	for i := range cases {
		cr := &cases[i]
		if cr.Direction != dir || cr.OK == 0 {
			continue
		}
		switch cr.Kind {
		case "zmq+control":
			plain = cr
		case "zmq+control+curve":
			curve = cr
		}
	}
	ck := Check{Group: dir, Name: "zmq+control+curve / zmq+control (MB/s)", Target: ">= 0.70"}
	if plain == nil || curve == nil {
		ck.Status, ck.Shown = "n/a", "n/a"
		return ck
	}
	ck.Value = curve.MBpsMedian / plain.MBpsMedian
	ck.Shown = fmt.Sprintf("%.2f", ck.Value)
	ck.Status = passMiss(ck.Value >= 0.7)
	pc, cc := plain.CaddyCPUMed+plain.WorkerCPUMed, curve.CaddyCPUMed+curve.WorkerCPUMed
	if pc > 0 && cc > 0 {
		ck.ByCPU = fmt.Sprintf("%.2f", pc/cc)
		ck.Note = fmt.Sprintf("Caddy+worker CPU per GiB: curve %.2f s, plain %.2f s", cc, pc)
	}
	return ck
}
