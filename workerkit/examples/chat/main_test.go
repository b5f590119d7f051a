package main

import (
	"bytes"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestEvent(t *testing.T) {
	tests := []struct{ msg, want string }{
		{"hi", "data: hi\n\n"},
		{"two\nlines", "data: two\ndata: lines\n\n"},
		{"crlf\r\nand\rcr", "data: crlf\ndata: and\ndata: cr\n\n"},
		{"trailing\n\nblank", "data: trailing\ndata: \ndata: blank\n\n"},
	}
	for _, tt := range tests {
		if got := string(event(tt.msg)); got != tt.want {
			t.Errorf("event(%q) = %q, want %q", tt.msg, got, tt.want)
		}
	}
}

// send takes the form field "message" when there is one, the body
// otherwise. (The room has no listeners here: Broadcast reaches nobody.)
func TestSend(t *testing.T) {
	var mp bytes.Buffer
	mw := multipart.NewWriter(&mp)
	_ = mw.WriteField("message", "from a multipart form")
	_ = mw.Close()
	tests := []struct {
		name, ctype, body string
		status            int
	}{
		{"text body", "text/plain", "hello", http.StatusNoContent},
		{"no content type", "", "hello", http.StatusNoContent},
		{"form field", "application/x-www-form-urlencoded", "message=hi+there", http.StatusNoContent},
		{"form without the field (curl -d)", "application/x-www-form-urlencoded", "hello, room", http.StatusNoContent},
		{"multipart form", mw.FormDataContentType(), mp.String(), http.StatusNoContent},
		{"empty", "text/plain", "", http.StatusBadRequest},
		{"only newlines", "text/plain", "\r\n\n", http.StatusBadRequest},
		{"empty form field", "application/x-www-form-urlencoded", "message=", http.StatusBadRequest},
		{"too large", "text/plain", strings.Repeat("x", maxMessage+1), http.StatusRequestEntityTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("POST", "/send", strings.NewReader(tt.body))
			if tt.ctype != "" {
				r.Header.Set("Content-Type", tt.ctype)
			}
			w := httptest.NewRecorder()
			send(w, r)
			if w.Code != tt.status {
				t.Errorf("status %d, want %d: %s", w.Code, tt.status, w.Body)
			}
		})
	}
}

// Outside workerkit (plain net/http) a response cannot be detached: the
// stream opens and ends at once instead of hanging.
func TestEventsWithoutWorkerkit(t *testing.T) {
	w := httptest.NewRecorder()
	events(w, httptest.NewRequest("GET", "/events", nil))
	if ct := w.Header().Get("Content-Type"); ct != "text/event-stream" || w.Body.String() != ": joined\n\n" {
		t.Errorf("Content-Type %q, body %q", ct, w.Body)
	}
}
