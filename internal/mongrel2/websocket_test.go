package mongrel2

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
)

func TestParseFlags(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want byte
		ok   bool
	}{
		{"0x81", 0x81, true}, {"0x8A", 0x8A, true}, {"0x8a", 0x8A, true}, {"0X82", 0x82, true},
		{"0x1", 0x01, true}, {"0xC1", 0xC1, true}, {"0xFF", 0xFF, true},
		{"", 0, false}, {"0x", 0, false}, {"81", 0, false}, {"0x181", 0, false},
		{"0xG1", 0, false}, {"1x81", 0, false}, {"0x-1", 0, false}, {" 0x81", 0, false},
	} {
		if got, ok := ParseFlags(tc.in); got != tc.want || ok != tc.ok {
			t.Errorf("ParseFlags(%q) = %#x, %v; want %#x, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

// FormatFlags writes what Mongrel2's "0x%X" writes, for every byte, and
// ParseFlags reads it back.
func TestFormatFlags(t *testing.T) {
	for i := range 256 {
		b := byte(i)
		if got, want := FormatFlags(b), fmt.Sprintf("0x%X", b); got != want {
			t.Fatalf("FormatFlags(%#x) = %q, want %q", b, got, want)
		}
		if got, ok := ParseFlags(FormatFlags(b)); !ok || got != b {
			t.Fatalf("ParseFlags(FormatFlags(%#x)) = %#x, %v", b, got, ok)
		}
	}
}

// FuzzParseFlags: ParseFlags agrees with strconv on "0x" and one or two
// hex digits, and refuses everything else.
func FuzzParseFlags(f *testing.F) {
	for _, s := range []string{"0x81", "0x8a", "0x", "0x181", "zz"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, ok := ParseFlags(s)
		wantOK := len(s) >= 3 && len(s) <= 4 && (strings.HasPrefix(s, "0x") || strings.HasPrefix(s, "0X"))
		var want uint64
		if wantOK {
			var err error
			want, err = strconv.ParseUint(s[2:], 16, 8)
			wantOK = err == nil && !strings.ContainsAny(s[2:], "+-_")
		}
		if ok != wantOK || ok && uint64(got) != want {
			t.Fatalf("ParseFlags(%q) = %#x, %v; want %#x, %v", s, got, ok, want, wantOK)
		}
	})
}
