package integration

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// kitTimeout bounds one run of the conformance command.
const kitTimeout = 3 * time.Minute

// runConformance runs bin/zmqx-conformance with args and returns its output
// and exit code.
func runConformance(t *testing.T, args ...string) (string, int) {
	t.Helper()
	bin := needFile(t, repoPath("bin", "zmqx-conformance"), "run make build")
	p := startProcess(t, "zmqx-conformance", command(t, bin, args...))
	select {
	case <-p.done:
	case <-time.After(kitTimeout):
		t.Fatalf("zmqx-conformance did not finish within %s:\n%s", kitTimeout, tail(p.out.String(), 8<<10))
	}
	var ee *exec.ExitError
	code := 0
	if errors.As(p.err, &ee) {
		code = ee.ExitCode()
	} else if p.err != nil {
		t.Fatalf("zmqx-conformance: %v", p.err)
	}
	return p.out.String(), code
}

// caseLines returns the table's result of each case, by name.
func caseLines(out string) map[string]string {
	res := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && (strings.HasPrefix(f[0], "mongrel2/") || strings.HasPrefix(f[0], "zmqx/")) {
			res[f[0]] = strings.TrimSpace(strings.TrimPrefix(line, f[0]))
		}
	}
	return res
}

// TestConformance runs the zmqx/1 conformance kit, as a third party would,
// against the example workers (every case passes) and against the Python
// Mongrel2 handler (the Mongrel2 cases pass, the zmqx ones report no
// control channel, and the run does not fail).
func TestConformance(t *testing.T) {
	workers := []struct {
		name string
		args []string
	}{
		{"hello-worker", []string{"--", repoPath("bin", "hello-worker"), "-frontend", "{requests},{replies},{control}"}},
		{"echo-worker", []string{"-big-path", "/big?bytes=1048576", "-upload-path", "/upload", "-hold-path", "/wait",
			"--", repoPath("bin", "echo-worker"), "-frontend", "{requests},{replies},{control}"}},
	}
	for _, w := range workers {
		t.Run(w.name, func(t *testing.T) {
			needFile(t, w.args[len(w.args)-3], "run make build")
			out, code := runConformance(t, w.args...)
			lines := caseLines(out)
			if code != 0 || len(lines) == 0 {
				t.Fatalf("exit code %d, want 0:\n%s", code, tail(out, 16<<10))
			}
			for name, res := range lines {
				if !strings.HasPrefix(res, "PASS") {
					t.Errorf("%s: %s, want PASS", name, res)
				}
			}
			t.Logf("\n%s", tableOf(out))
		})
	}
	t.Run("m2handler.py", func(t *testing.T) {
		py := needFile(t, "/usr/bin/python3", "run make deps (python3-zmq)")
		if err := exec.Command(py, "-c", "import zmq").Run(); err != nil {
			if integrationRequired() {
				t.Fatalf("python3-zmq is missing (run make deps): %v", err)
			}
			t.Skipf("python3-zmq is missing: %v", err)
		}
		t.Setenv("PYTHONDONTWRITEBYTECODE", "1")
		out, code := runConformance(t, "--", py, "-u", repoPath("integration", "testdata", "m2handler.py"),
			"--requests", "{requests}", "--replies", "{replies}")
		lines := caseLines(out)
		if code != 0 || len(lines) == 0 {
			t.Fatalf("exit code %d, want 0:\n%s", code, tail(out, 16<<10))
		}
		for name, res := range lines {
			want := "NO CONTROL CHANNEL"
			if strings.HasPrefix(name, "mongrel2/") {
				want = "PASS"
			}
			if !strings.HasPrefix(res, want) {
				t.Errorf("%s: %s, want %s", name, res, want)
			}
		}
		t.Logf("\n%s", tableOf(out))
	})
}

// tableOf is the report table at the end of the command's output.
func tableOf(out string) string {
	if i := strings.LastIndex(out, "\nworker "); i >= 0 {
		return out[i+1:]
	}
	return out
}
