package zcert

import (
	"strings"
	"testing"
)

// The test keypair of libzmq's doc/zmq_curve.txt.
const (
	docPublic = "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID"
	docSecret = "D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name, in     string
		pub, sec     string
		wantErrMatch string
	}{
		{name: "CZMQ secret file", in: `#   ****  Generated on 2015-03-16 18:18:52 by CZMQ  ****
#   ZeroMQ CURVE **Secret** Certificate
#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.

metadata
    name = "worker"
curve
    public-key = "` + docPublic + `"
    secret-key = "` + docSecret + `"
`, pub: docPublic, sec: docSecret},
		{name: "pyzmq public file", in: "#   ZeroMQ CURVE Public Certificate\n\nmetadata\ncurve\n    public-key = \"" + docPublic + "\"\n",
			pub: docPublic},
		{name: "tabs and no quotes", in: "curve\n\tpublic-key=" + docPublic + "\n", pub: docPublic},
		{name: "key outside curve ignored", in: "metadata\n    public-key = \"" + docPublic + "\"\n", wantErrMatch: "no public-key"},
		{name: "short key", in: "curve\n    public-key = \"abc\"\n", wantErrMatch: "40 characters"},
		{name: "not Z85", in: "curve\n    public-key = \"" + strings.Repeat("~", 40) + "\"\n", wantErrMatch: "not Z85"},
		{name: "secret of another key", in: "curve\n    public-key = \"" + docPublic + "\"\n    secret-key = \"" +
			"JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6" + "\"\n", wantErrMatch: "does not belong"},
		{name: "empty", in: "", wantErrMatch: "no public-key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.in))
			if tc.wantErrMatch != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErrMatch) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErrMatch)
				}
				return
			}
			if err != nil || c.Public != tc.pub || c.Secret != tc.sec {
				t.Fatalf("got %+v, %v; want %s %s", c, err, tc.pub, tc.sec)
			}
		})
	}
}

func TestFormatRoundTrip(t *testing.T) {
	for _, secret := range []string{"", docSecret} {
		c, err := Parse(Format(docPublic, secret))
		if err != nil || c.Public != docPublic || c.Secret != secret {
			t.Fatalf("round trip with secret %q: %+v, %v", secret, c, err)
		}
	}
	if pub, err := PublicOf(docSecret); err != nil || pub != docPublic {
		t.Fatalf("PublicOf(doc secret) = %q, %v; want %q", pub, err, docPublic)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(Format(docPublic, docSecret))
	f.Add(Format(docPublic, ""))
	f.Add([]byte("curve\n public-key = \"\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			return
		}
		if CheckKey(c.Public) != nil {
			t.Fatalf("accepted an invalid public key %q", c.Public)
		}
		again, err := Parse(Format(c.Public, c.Secret))
		if err != nil || again != c {
			t.Fatalf("round trip of %+v: %+v, %v", c, again, err)
		}
	})
}
