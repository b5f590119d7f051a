package main

import (
	"net/http/httptest"
	"testing"
)

func TestSameOrigin(t *testing.T) {
	tests := []struct {
		origin, host string
		want         bool
	}{
		{"", "example.com", true},
		{"https://example.com", "example.com", true},
		{"http://localhost:8080", "localhost:8080", true},
		{"https://evil.example", "example.com", false},
		{"https://example.com:444", "example.com", false},
		{"::bad", "example.com", false},
	}
	for _, tt := range tests {
		r := httptest.NewRequest("GET", "/ws", nil)
		r.Host = tt.host
		if tt.origin != "" {
			r.Header.Set("Origin", tt.origin)
		}
		if got := sameOrigin(r); got != tt.want {
			t.Errorf("origin %q host %q: %v, want %v", tt.origin, tt.host, got, tt.want)
		}
	}
}

// Without the front end's handshake, /ws answers 426.
func TestNotAnUpgrade(t *testing.T) {
	w := httptest.NewRecorder()
	echo(w, httptest.NewRequest("GET", "/echo", nil))
	if w.Code != 426 {
		t.Fatalf("status %d, want 426", w.Code)
	}
}
