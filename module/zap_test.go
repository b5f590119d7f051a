package caddyzmq

import (
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// TestRefusalLoggedOnceAcrossReloads: a refused key is logged once, and a
// reload (which sets the allow-list again, the same or another) does not
// make its next refusal log again, unless the key was allowed and has been
// removed since. The set of logged refusals stays bounded.
func TestRefusalLoggedOnceAcrossReloads(t *testing.T) {
	core, logs := observer.New(zap.WarnLevel)
	a := newAuthorizer("pool", zap.New(core))
	good, stranger := "good-key", "stranger-key"
	refusals := func() int { return logs.FilterField(zap.String("public_key", stranger)).Len() }
	steps := []struct {
		name    string
		allowed []string
		want    int
	}{
		{"first refusal", []string{good}, 1},
		{"retry", nil, 1},
		{"reload with the same list", []string{good}, 1},
		{"reload with another list", []string{good, "other"}, 1},
		{"allowed then removed", []string{good, stranger}, 1},
		{"refused again after removal", []string{good}, 2},
	}
	for _, st := range steps {
		if st.allowed != nil {
			keys := map[string]string{}
			for _, k := range st.allowed {
				keys[k] = "inline"
			}
			a.setAllowed(keys)
		}
		if !a.allows(stranger) {
			a.refuse(refusedUnknownKey, "10.0.0.9", stranger)
			a.refuse(refusedUnknownKey, "10.0.0.9", stranger)
		}
		if got := refusals(); got != st.want {
			t.Fatalf("%s: %d refusal lines for the key, want %d", st.name, got, st.want)
		}
	}
	for i := range 2 * maxRememberedRefusal {
		a.refuse(refusedUnknownKey, "", string(rune(i))+"k")
	}
	if n := len(a.seen); n > maxRememberedRefusal {
		t.Fatalf("%d refusals remembered, want at most %d", n, maxRememberedRefusal)
	}
}
