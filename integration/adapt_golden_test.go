package integration

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// updateGolden rewrites the golden files of TestCaddyfilesGolden:
//
//	make build && go test ./integration/ -run TestCaddyfilesGolden -update
var updateGolden = flag.Bool("update", false, "rewrite integration/testdata/adapt/*.json from bin/caddy adapt")

const goldenUpdateCommand = "make build && go test ./integration/ -run TestCaddyfilesGolden -update"

// envVarRef matches a Caddyfile environment placeholder, {$NAME} or
// {$NAME:default}.
var envVarRef = regexp.MustCompile(`\{\$([A-Za-z_][A-Za-z0-9_]*)`)

// TestCaddyfilesGolden: `bin/caddy adapt` turns each file in caddyfiles/
// into exactly the JSON checked in as integration/testdata/adapt/<file>.json,
// so that a change in what a Caddyfile means (or in how the zmq directive
// parses it) shows up in review. Every {$VAR} the file names is removed from
// the environment, so the defaults written in the file apply whatever the
// caller's environment holds.
func TestCaddyfilesGolden(t *testing.T) {
	bin := caddyBin(t)
	files, err := filepath.Glob(repoPath("caddyfiles", "*"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no files in caddyfiles/")
	}
	dir := repoPath("integration", "testdata", "adapt")
	want := map[string]bool{}
	for _, f := range files {
		name := filepath.Base(f)
		golden := filepath.Join(dir, name+".json")
		want[filepath.Base(golden)] = true
		t.Run(name, func(t *testing.T) {
			got := adaptNormalised(t, bin, f)
			if *updateGolden {
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			exp, err := os.ReadFile(golden)
			if os.IsNotExist(err) {
				t.Fatalf("caddyfiles/%s has no golden file %s; create it with:\n\t%s\nand review it before committing",
					name, relToRepo(golden), goldenUpdateCommand)
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, exp) {
				t.Errorf("bin/caddy adapt caddyfiles/%s differs from %s:\n%s\nIf the change is intended, regenerate with:\n\t%s",
					name, relToRepo(golden), lineDiff(string(exp), string(got)), goldenUpdateCommand)
			}
		})
	}
	// A golden file whose Caddyfile is gone is a leftover.
	stale, _ := filepath.Glob(filepath.Join(dir, "*.json"))
	for _, g := range stale {
		if !want[filepath.Base(g)] {
			t.Errorf("%s has no Caddyfile in caddyfiles/: delete it", relToRepo(g))
		}
	}
}

// adaptNormalised runs bin/caddy adapt on file with the file's {$VARS}
// unset and returns the JSON indented with tabs, keys sorted, no HTML
// escaping, ending in a newline.
func adaptNormalised(t *testing.T, bin, file string) []byte {
	t.Helper()
	src, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	unset := map[string]bool{}
	for _, m := range envVarRef.FindAllStringSubmatch(string(src), -1) {
		unset[m[1]] = true
	}
	tmp := t.TempDir()
	env := []string{"XDG_DATA_HOME=" + tmp, "XDG_CONFIG_HOME=" + tmp, "HOME=" + tmp}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if !unset[k] && k != "XDG_DATA_HOME" && k != "XDG_CONFIG_HOME" && k != "HOME" {
			env = append(env, kv)
		}
	}
	cmd := exec.Command(bin, "adapt", "--config", file, "--adapter", "caddyfile", "--pretty")
	cmd.Dir = tmp
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("caddy adapt: %v\n%s", err, stderr.String())
	}
	var v any
	if err := json.Unmarshal(stdout.Bytes(), &v); err != nil {
		t.Fatalf("caddy adapt printed no JSON: %v\n%s", err, stdout.String())
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "\t")
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func relToRepo(path string) string {
	if rel, err := filepath.Rel(repoRoot, path); err == nil {
		return rel
	}
	return path
}

// lineDiff lists the lines of want and got that differ, by position once
// the common start and end are cut off: enough to see a changed setting.
func lineDiff(want, got string) string {
	a, b := strings.Split(want, "\n"), strings.Split(got, "\n")
	pre := 0
	for pre < len(a) && pre < len(b) && a[pre] == b[pre] {
		pre++
	}
	suf := 0
	for suf < len(a)-pre && suf < len(b)-pre && a[len(a)-1-suf] == b[len(b)-1-suf] {
		suf++
	}
	var s strings.Builder
	s.WriteString("@@ line " + strconv.Itoa(pre+1) + "\n")
	for _, l := range a[pre : len(a)-suf] {
		s.WriteString("- " + l + "\n")
	}
	for _, l := range b[pre : len(b)-suf] {
		s.WriteString("+ " + l + "\n")
	}
	return s.String()
}
