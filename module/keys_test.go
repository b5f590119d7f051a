package caddyzmq

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"

	"github.com/zmqbridge/caddy-zmq/internal/zcert"
)

func TestCurveCaddyfile(t *testing.T) {
	kp := keyPair{public: "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID", secret: "D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs"}
	tests := []struct {
		name    string
		input   string
		want    Handler
		wantErr string
	}{
		{name: "allow and dir", input: "zmq {\n curve {\n allow " + kp.public + " " + kp.public + "\n allow_dir /etc/keys\n }\n}",
			want: Handler{Curve: &Curve{Allow: []string{kp.public, kp.public}, AllowDir: "/etc/keys"}}},
		{name: "secret key", input: "zmq {\n curve {\n secret_key " + kp.secret + "\n }\n}",
			want: Handler{Curve: &Curve{SecretKey: kp.secret}}},
		{name: "empty block: generated key, nobody allowed", input: "zmq {\n curve\n}", want: Handler{Curve: &Curve{}}},
		{name: "plaintext pool", input: "zmq {\n curve\n pool legacy tcp://127.0.0.1:1 tcp://127.0.0.1:2 {\n plaintext\n }\n}",
			want: Handler{Curve: &Curve{}, Pools: []Pool{{Name: "legacy", RequestEndpoint: "tcp://127.0.0.1:1", ReplyEndpoint: "tcp://127.0.0.1:2", Plaintext: true}}}},
		{name: "unknown option", input: "zmq {\n curve {\n secret nope\n }\n}", wantErr: "unknown curve option"},
		{name: "two files", input: "zmq {\n curve {\n secret_key_file a b\n }\n}", wantErr: "takes one argument"},
		{name: "argument", input: "zmq {\n curve on\n}", wantErr: "takes a block"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(h, tc.want) {
				t.Fatalf("got %+v (curve %+v), want %+v (curve %+v)", h, h.Curve, tc.want, tc.want.Curve)
			}
		})
	}
}

func TestCurveValidate(t *testing.T) {
	good := "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID"
	for _, c := range []Curve{
		{Allow: []string{"short"}},
		{SecretKey: "x"},
		{SecretKey: good, SecretKeyFile: "f"},
	} {
		if err := c.validate(); err == nil {
			t.Errorf("%+v: no error", c)
		}
	}
	if err := (&Curve{Allow: []string{good}}).validate(); err != nil {
		t.Fatal(err)
	}
}

func TestLoadKeyDir(t *testing.T) {
	dir := t.TempDir()
	a, b := mustKeyPair(t), mustKeyPair(t)
	for name, kp := range map[string]keyPair{"a": a, "b": b} {
		if err := writeKeyFiles(filepath.Join(dir, name), kp); err != nil {
			t.Fatal(err)
		}
	}
	if err := writeKeyFiles(filepath.Join(dir, "a"), a); err == nil {
		t.Fatal("writeKeyFiles overwrote an existing key")
	}
	keys, err := loadKeyDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{a.public: "a.key", b.public: "b.key"}
	if !reflect.DeepEqual(keys, want) {
		t.Fatalf("keys = %v, want %v (secret files are not *.key)", keys, want)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "a.key_secret")); fi.Mode().Perm() != 0o600 {
		t.Fatalf("secret file mode %v, want 0600", fi.Mode().Perm())
	}
	os.WriteFile(filepath.Join(dir, "bad.key"), []byte("curve\n public-key = \"nope\"\n"), 0o644)
	if _, err := loadKeyDir(dir); err == nil || !strings.Contains(err.Error(), "bad.key") {
		t.Fatalf("a bad key file: %v, want an error naming it", err)
	}
	// A directory that does not exist yet: nobody allowed, no error.
	keys, err = (&Curve{AllowDir: filepath.Join(dir, "missing")}).allowed()
	if err != nil || len(keys) != 0 {
		t.Fatalf("missing directory: %v, %v", keys, err)
	}
}

// TestFrontEndKeyInStorage: front ends starting together on one storage
// generate one keypair between them (under the storage lock), and keep it.
func TestFrontEndKeyInStorage(t *testing.T) {
	st := &certmagic.FileStorage{Path: t.TempDir()}
	ctx := context.Background()
	const n = 4
	got := make([]keyPair, n)
	created := make([]bool, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			got[i], created[i], err = loadOrCreateFrontEndKey(ctx, st)
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	made := 0
	for i := range n {
		if created[i] {
			made++
		}
		if got[i] != got[0] {
			t.Fatalf("front end %d got another key", i)
		}
	}
	if made != 1 {
		t.Fatalf("%d front ends generated a key, want 1", made)
	}
	if pub, err := zcert.PublicOf(got[0].secret); err != nil || pub != got[0].public {
		t.Fatalf("stored keypair does not match: %v", err)
	}
	again, err := loadFrontEndKey(ctx, st)
	if err != nil || again != got[0] {
		t.Fatalf("reload: %v, %v", again, err)
	}
}

func TestWarnLimiter(t *testing.T) {
	var l warnLimiter
	now := time.Unix(1000, 0)
	if ok, _ := l.allow("a", now); !ok {
		t.Fatal("first warning held back")
	}
	for i := range 100 {
		if ok, _ := l.allow("a", now.Add(time.Duration(i)*time.Millisecond)); ok {
			t.Fatal("repeated warning within the window let through")
		}
	}
	if ok, _ := l.allow("b", now); !ok {
		t.Fatal("another kind held back")
	}
	ok, suppressed := l.allow("a", now.Add(warnEvery))
	if !ok || suppressed != 100 {
		t.Fatalf("after the window: %v, %d suppressed; want true, 100", ok, suppressed)
	}
}

func TestExposed(t *testing.T) {
	for ep, want := range map[string]bool{
		"tcp://127.0.0.1:9997": false, "tcp://localhost:1": false, "tcp://[::1]:1": false,
		"ipc:///tmp/x": false, "inproc://x": false,
		"tcp://*:9997": true, "tcp://0.0.0.0:1": true, "tcp://10.0.0.1:1": true, "tcp://eth0:1": true,
	} {
		if got := exposed(ep); got != want {
			t.Errorf("exposed(%q) = %v, want %v", ep, got, want)
		}
	}
}
