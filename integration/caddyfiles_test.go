package integration

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCaddyfilesAdapt: every file in caddyfiles/ adapts with the built
// bin/caddy into JSON that uses the zmq handler, without warnings (e.g.
// "input is not formatted").
func TestCaddyfilesAdapt(t *testing.T) {
	bin := caddyBin(t)
	files, err := filepath.Glob(repoPath("caddyfiles", "*"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no files in caddyfiles/")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			cmd := exec.Command(bin, "adapt", "--config", f, "--adapter", "caddyfile")
			cmd.Dir = t.TempDir()
			cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+cmd.Dir, "XDG_CONFIG_HOME="+cmd.Dir)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil {
				t.Fatalf("caddy adapt: %v\n%s", err, stderr.String())
			}
			if !bytes.Contains(stdout.Bytes(), []byte(`"handler":"zmq"`)) {
				t.Errorf(`adapted JSON has no "handler":"zmq": %s`, stdout.String())
			}
			if !json.Valid(stdout.Bytes()) {
				t.Errorf("adapted output is not JSON: %s", stdout.String())
			}
			if s := strings.TrimSpace(stderr.String()); strings.Contains(s, "WARN") {
				t.Errorf("caddy adapt warned:\n%s", s)
			}
		})
	}
}
