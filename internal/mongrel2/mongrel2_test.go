package mongrel2

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

func TestRequestRoundTrip(t *testing.T) {
	tests := []struct {
		name   string
		format HeaderFormat
		fields []Field
		body   string
	}{
		{"json simple", FormatJSON, []Field{{"host", []string{"localhost"}}, {"METHOD", []string{"GET"}}}, ""},
		{"json list", FormatJSON, []Field{{"cookie", []string{"a=1", "b=2"}}, {"METHOD", []string{"POST"}}}, "hello"},
		{"json escapes", FormatJSON, []Field{{"x-q", []string{"a\"b\\c\n\x01é/"}}}, "body\x00bytes"},
		{"tns simple", FormatTNetString, []Field{{"host", []string{"localhost"}}, {"METHOD", []string{"GET"}}}, "x"},
		{"tns list", FormatTNetString, []Field{{"cookie", []string{"a=1", "", "b=2"}}, {"PATH", []string{"/"}}}, ""},
		{"empty headers json", FormatJSON, nil, ""},
		{"empty headers tns", FormatTNetString, nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var e HeaderEncoder
			e.Reset(tc.format)
			for _, f := range tc.fields {
				e.AddList(f.Name, f.Values)
			}
			msg := AppendRequest(nil, "34f9ceee-cd52", "42", "/p/a th", e.Bytes(), []byte(tc.body))
			// Paths may not contain spaces on the wire; use one without.
			msg = AppendRequest(nil, "34f9ceee-cd52", "42", "/p/ath", func() []byte {
				e.Reset(tc.format)
				for _, f := range tc.fields {
					e.AddList(f.Name, f.Values)
				}
				return e.Bytes()
			}(), []byte(tc.body))
			r, err := ParseRequest(msg)
			if err != nil {
				t.Fatalf("ParseRequest(%q): %v", msg, err)
			}
			if r.Sender != "34f9ceee-cd52" || r.ConnID != "42" || r.Path != "/p/ath" || string(r.Body) != tc.body {
				t.Fatalf("got %+v", r)
			}
			if len(tc.fields) == 0 && len(r.Headers) == 0 {
				return
			}
			if !reflect.DeepEqual(r.Headers, tc.fields) {
				t.Fatalf("headers: got %#v want %#v", r.Headers, tc.fields)
			}
		})
	}
}

// TestMongrel2Bytes pins the exact bytes Mongrel2 produces for the same input.
func TestMongrel2Bytes(t *testing.T) {
	var e HeaderEncoder
	e.Reset(FormatJSON)
	e.Add("PATH", "/")
	e.Add("host", "localhost:6767")
	e.Add("METHOD", "GET")
	got := string(AppendRequest(nil, "u-1", "7", "/", e.Bytes(), nil))
	want := `u-1 7 / 51:{"PATH":"/","host":"localhost:6767","METHOD":"GET"},0:,`
	if got != want {
		t.Fatalf("json request:\n got %q\nwant %q", got, want)
	}
	e.Reset(FormatTNetString)
	e.Add("PATH", "/")
	e.Add("METHOD", "GET")
	got = string(AppendRequest(nil, "u-1", "7", "/", e.Bytes(), []byte("ab")))
	want = `u-1 7 / 26:4:PATH,1:/,6:METHOD,3:GET,}2:ab,`
	if got != want {
		t.Fatalf("tns request:\n got %q\nwant %q", got, want)
	}
	got = string(AppendDisconnect(nil, "u-1", "7"))
	want = `u-1 7 @* 17:{"METHOD":"JSON"},21:{"type":"disconnect"},`
	if got != want {
		t.Fatalf("disconnect:\n got %q\nwant %q", got, want)
	}
	got = string(AppendReply(nil, "u-1", []string{"7", "12"}, []byte("HTTP/1.1 200 OK\r\n\r\n")))
	want = "u-1 4:7 12, HTTP/1.1 200 OK\r\n\r\n"
	if got != want {
		t.Fatalf("reply:\n got %q\nwant %q", got, want)
	}
	if one := string(AppendReplyOne(nil, "u-1", "7", []byte("x"))); one != "u-1 1:7, x" {
		t.Fatalf("reply one: %q", one)
	}
}

func TestDisconnectParses(t *testing.T) {
	r, err := ParseRequest(AppendDisconnect(nil, "u-1", "99"))
	if err != nil {
		t.Fatal(err)
	}
	if !r.IsDisconnect() || r.ConnID != "99" || r.Path != "@*" {
		t.Fatalf("got %+v", r)
	}
	r, _ = ParseRequest(jsonMsg(`{"METHOD":"JSON"}`, `{"type":"other"}`))
	if r == nil || r.IsDisconnect() {
		t.Fatalf("non-disconnect JSON message taken as disconnect: %+v", r)
	}
}

func TestHeaderLastWins(t *testing.T) {
	r, err := ParseRequest(jsonMsg(`{"METHOD":"evil","x":"1","METHOD":"GET"}`, ""))
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Header("METHOD"); got != "GET" {
		t.Fatalf("METHOD = %q, want the later (server) value", got)
	}
	if got := r.Header("method"); got != "" {
		t.Fatalf("names must be case sensitive, got %q", got)
	}
}

func TestParseRequestErrors(t *testing.T) {
	bad := []string{
		"",
		"u",
		"u 1",
		"u x / 2:{},0:,",
		"u 1  2:{},0:,",
		"u 1 / 3:{},0:,",
		"u 1 / 2:{}.0:,",
		"u 1 / 2:{},0:;",
		"u 1 / 2:{},0:,trailing",
		"u 1 / 01:{},0:,",
		"u 1 / 99999999999:{},0:,",
		"u 1 / 5:{\"a\"},0:,",
		"u 1 / 9:{\"a\":{}},0:,",
		"u 1 / 4:3:a,}0:,",
		"u 1 / 8:1:a,1:b;}0:,",
		`u 1 / 8:{"a":"\},0:,`,
	}
	for _, m := range bad {
		if r, err := ParseRequest([]byte(m)); err == nil {
			t.Errorf("ParseRequest(%q) = %+v, want error", m, r)
		}
	}
}

func TestParseReply(t *testing.T) {
	tests := []struct {
		msg     string
		sender  string
		ids     []string
		body    string
		wantErr bool
	}{
		{msg: "u 1:7, hi", sender: "u", ids: []string{"7"}, body: "hi"},
		{msg: "u 4:7 12, ", sender: "u", ids: []string{"7", "12"}, body: ""},
		{msg: "u 1:7,  body with space", sender: "u", ids: []string{"7"}, body: " body with space"},
		{msg: "u 0:, x", wantErr: true},
		{msg: "u 2:7 , x", wantErr: true},
		{msg: "u 3:7  , x", wantErr: true},
		{msg: "u 3:7 a, x", wantErr: true},
		{msg: "u 1:7,x", wantErr: true},
		{msg: "u 1:7;", wantErr: true},
		{msg: " 1:7, x", wantErr: true},
		{msg: "u1:7, x", wantErr: true},
		{msg: "u 9:7, x", wantErr: true},
	}
	for _, tc := range tests {
		sender, ids, body, err := ParseReply([]byte(tc.msg))
		if tc.wantErr {
			if err == nil {
				t.Errorf("ParseReply(%q): want error", tc.msg)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseReply(%q): %v", tc.msg, err)
			continue
		}
		var got []string
		for id, r := NextID(ids); id != nil; id, r = NextID(r) {
			got = append(got, string(id))
		}
		if string(sender) != tc.sender || !reflect.DeepEqual(got, tc.ids) || string(body) != tc.body {
			t.Errorf("ParseReply(%q) = %q %q %q", tc.msg, sender, got, body)
		}
	}
	many := make([]string, MaxReplyTargets+1)
	for i := range many {
		many[i] = "1"
	}
	if _, _, _, err := ParseReply(AppendReply(nil, "u", many, nil)); err == nil {
		t.Error("more than MaxReplyTargets ids accepted")
	}
	if _, _, _, err := ParseReply(AppendReply(nil, "u", many[:MaxReplyTargets], nil)); err != nil {
		t.Errorf("MaxReplyTargets ids refused: %v", err)
	}
}

func TestParseUint(t *testing.T) {
	for in, want := range map[string]uint64{"0": 0, "42": 42, "18446744073709551615": 1<<64 - 1} {
		if got, ok := ParseUint([]byte(in)); !ok || got != want {
			t.Errorf("ParseUint(%q) = %d, %v", in, got, ok)
		}
	}
	for _, in := range []string{"", "a", "18446744073709551616", "-1", strings.Repeat("1", 21)} {
		if _, ok := ParseUint([]byte(in)); ok {
			t.Errorf("ParseUint(%q) accepted", in)
		}
	}
}

func TestParseHeaderFormat(t *testing.T) {
	for _, f := range []HeaderFormat{FormatJSON, FormatTNetString} {
		g, err := ParseHeaderFormat(f.String())
		if err != nil || g != f {
			t.Errorf("round trip %v: %v %v", f, g, err)
		}
	}
	if _, err := ParseHeaderFormat("xml"); err == nil {
		t.Error("xml accepted")
	}
}

func TestJSONUnicodeEscapes(t *testing.T) {
	r, err := ParseRequest(jsonMsg(`{"a":"\u00e9\ud83d\ude00\ud800x"}`, ""))
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Header("a"); got != "é😀\uFFFDx" {
		t.Fatalf("got %q", got)
	}
}

func BenchmarkAppendRequest(b *testing.B) {
	var e HeaderEncoder
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		e.Reset(FormatJSON)
		e.Add("PATH", "/")
		e.Add("host", "localhost:8443")
		e.Add("user-agent", "wrk")
		e.Add("METHOD", "GET")
		e.Add("VERSION", "HTTP/1.1")
		e.Add("URI", "/")
		e.Add("PATTERN", "/")
		e.Add("URL_SCHEME", "https")
		e.Add("REMOTE_ADDR", "127.0.0.1")
		buf = AppendRequest(buf[:0], "34f9ceee-cd52-4b7f-b197-88bf2f0ec378", "123456789", "/", e.Bytes(), nil)
	}
}

func BenchmarkParseRequest(b *testing.B) {
	var e HeaderEncoder
	e.Reset(FormatJSON)
	e.Add("PATH", "/")
	e.Add("host", "localhost:8443")
	e.Add("user-agent", "wrk")
	e.Add("METHOD", "GET")
	e.Add("VERSION", "HTTP/1.1")
	e.Add("URI", "/")
	e.Add("PATTERN", "/")
	e.Add("URL_SCHEME", "https")
	e.Add("REMOTE_ADDR", "127.0.0.1")
	msg := AppendRequest(nil, "34f9ceee-cd52-4b7f-b197-88bf2f0ec378", "123456789", "/", e.Bytes(), nil)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseRequest(msg); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseReply(b *testing.B) {
	msg := AppendReplyOne(nil, "34f9ceee-cd52-4b7f-b197-88bf2f0ec378", "123456789", []byte("HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nHello, world!"))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, _, err := ParseReply(msg); err != nil {
			b.Fatal(err)
		}
	}
}

var _ = bytes.Equal

// jsonMsg frames a raw JSON header block and body as a request.
func jsonMsg(headers, body string) []byte {
	return AppendRequest(nil, "u", "1", "/", []byte(headers), []byte(body))
}

func TestIsServerKey(t *testing.T) {
	for name, want := range map[string]bool{
		"METHOD": true, "URL_SCHEME": true, "REMOTE_ADDR": true, "X-1": true,
		"host": false, "x-forwarded-for": false, "Content-Type": false, "x-1": false, "123": false, "": false,
	} {
		if got := IsServerKey(name); got != want {
			t.Errorf("IsServerKey(%q) = %v, want %v", name, got, want)
		}
	}
}
