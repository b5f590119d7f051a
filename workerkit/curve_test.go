package workerkit

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	zmq "github.com/pebbe/zmq4"

	"github.com/zmqbridge/caddy-zmq/internal/zcert"
)

func TestFrontEndCurveValidation(t *testing.T) {
	spub, _, _ := zmq.NewCurveKeypair()
	wpub, wsec, _ := zmq.NewCurveKeypair()
	opub, _, _ := zmq.NewCurveKeypair()
	base := FrontEnd{Requests: "tcp://127.0.0.1:1", Replies: "tcp://127.0.0.1:2"}
	tests := []struct {
		name    string
		mod     func(*FrontEnd)
		wantErr string
	}{
		{name: "plaintext", mod: func(*FrontEnd) {}},
		{name: "full", mod: func(f *FrontEnd) { f.ServerKey, f.PublicKey, f.SecretKey = spub, wpub, wsec }},
		{name: "public derived", mod: func(f *FrontEnd) { f.ServerKey, f.SecretKey = spub, wsec }},
		{name: "no secret", mod: func(f *FrontEnd) { f.ServerKey = spub }, wantErr: "both"},
		{name: "no server key", mod: func(f *FrontEnd) { f.SecretKey = wsec }, wantErr: "both"},
		{name: "bad server key", mod: func(f *FrontEnd) { f.ServerKey, f.SecretKey = "x", wsec }, wantErr: "ServerKey"},
		{name: "mismatched public", mod: func(f *FrontEnd) { f.ServerKey, f.PublicKey, f.SecretKey = spub, opub, wsec }, wantErr: "does not belong"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := base
			tc.mod(&f)
			err := f.validate()
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
			if err == nil && f.curveOn() && f.publicKey() != wpub {
				t.Fatalf("public key %q, want %q", f.publicKey(), wpub)
			}
		})
	}
}

func TestCurveFlags(t *testing.T) {
	dir := t.TempDir()
	spub, ssec, _ := zmq.NewCurveKeypair()
	wpub, wsec, _ := zmq.NewCurveKeypair()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	serverFile := write("server.key", zcert.Format(spub, ""))
	workerSecret := write("w.key_secret", zcert.Format(wpub, wsec))
	workerPublic := write("w.key", zcert.Format(wpub, ""))
	_ = ssec
	for _, server := range []string{spub, serverFile} {
		var c CurveFlags
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		c.Register(fs)
		if err := fs.Parse([]string{"-curve-server-key", server, "-curve-key", workerSecret}); err != nil {
			t.Fatal(err)
		}
		fes := []FrontEnd{DefaultFrontEnd, DefaultFrontEnd}
		if err := c.Apply(fes); err != nil {
			t.Fatal(err)
		}
		for _, f := range fes {
			if f.ServerKey != spub || f.PublicKey != wpub || f.SecretKey != wsec {
				t.Fatalf("server %q: front end %+v", server, f)
			}
		}
	}
	for name, c := range map[string]CurveFlags{
		"public file as secret": {ServerKey: spub, KeyFile: workerPublic},
		"server key alone":      {ServerKey: spub},
		"missing file":          {ServerKey: spub, KeyFile: filepath.Join(dir, "nope")},
	} {
		if err := c.Apply([]FrontEnd{DefaultFrontEnd}); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	var none CurveFlags
	fes := []FrontEnd{DefaultFrontEnd}
	if err := none.Apply(fes); err != nil || fes[0].curveOn() {
		t.Fatalf("no flags: %v, %+v", err, fes[0])
	}
}
