package hopbyhop

import (
	"net/http"
	"testing"
)

func TestIs(t *testing.T) {
	for _, tc := range []struct {
		name string
		want bool
	}{
		{"Connection", true},
		{"Keep-Alive", true},
		{"Proxy-Authorization", true},
		{"Proxy-Authenticate", true},
		{"Proxy-Connection", true},
		{"Te", true},
		{"Trailer", true},
		{"Transfer-Encoding", true},
		{"Upgrade", true},
		{"Alt-Svc", true},
		// Not hop-by-hop: end-to-end fields, near misses.
		{"Authorization", false},
		{"Trailers", false},
		{"Content-Length", false},
		{"X-Forwarded-For", false},
		{"Cookie", false},
		{"Upgrade-Insecure-Requests", false},
		{"", false},
		// Is takes canonical names; callers canonicalise.
		{"connection", false},
	} {
		if got := Is(tc.name); got != tc.want {
			t.Errorf("Is(%q) = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// Fields and Is must describe one list.
func TestFieldsAreCanonicalAndMatchIs(t *testing.T) {
	for _, f := range Fields() {
		if f != http.CanonicalHeaderKey(f) {
			t.Errorf("%q is not canonical", f)
		}
		if !Is(f) {
			t.Errorf("Is(%q) = false for a listed field", f)
		}
	}
	f := Fields()
	f[0] = "X-Changed"
	if Fields()[0] == "X-Changed" {
		t.Error("Fields returned the package's own array")
	}
}

func TestNominated(t *testing.T) {
	for _, tc := range []struct {
		connection []string
		name       string
		want       bool
	}{
		{nil, "X-Secret", false},
		{[]string{"keep-alive, X-Secret"}, "X-Secret", true},
		{[]string{"keep-alive,x-secret"}, "X-Secret", true},
		{[]string{"keep-alive", "  X-SECRET  "}, "X-Secret", true},
		{[]string{"close"}, "X-Secret", false},
		{[]string{"X-Secret-Other"}, "X-Secret", false},
		{[]string{"X-Sec"}, "X-Secret", false},
		{[]string{",,"}, "X-Secret", false},
		{[]string{"Cookie"}, "Cookie", true},
	} {
		if got := Nominated(tc.connection, tc.name); got != tc.want {
			t.Errorf("Nominated(%q, %q) = %v, want %v", tc.connection, tc.name, got, tc.want)
		}
	}
}

func TestDrop(t *testing.T) {
	conn := []string{"keep-alive, X-Secret"}
	for _, tc := range []struct {
		name string
		want bool
	}{
		{"X-Secret", true},
		{"Proxy-Authorization", true},
		{"Te", true},
		{"Accept", false},
	} {
		if got := Drop(conn, tc.name); got != tc.want {
			t.Errorf("Drop(%q) = %v, want %v", tc.name, got, tc.want)
		}
	}
}
