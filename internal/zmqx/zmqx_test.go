package zmqx

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

// The wire bytes are pinned here, spelled out: a change to a verb's spelling
// or a message's layout breaks every deployed peer, and must break a test
// first.
func TestAppend(t *testing.T) {
	tests := []struct {
		name string
		got  []byte
		want string
	}{
		{"hello", AppendHello(nil, 8), "HELLO 8"},
		{"heartbeat", AppendHeartbeat(nil), "HB"},
		{"bye", AppendBye(nil), "BYE"},
		{"reset", AppendReset(nil), "RESET"},
		{"ack one", AppendAck(nil, "7"), "ACK 7"},
		{"ack several", AppendAck(nil, "7", "12", "18446744073709551615"), "ACK 7 12 18446744073709551615"},
		{"ack built", AppendID(AppendID(AppendAck(nil), "1"), "2"), "ACK 1 2"},
		{"nack", AppendNack(nil, "3", "4"), "NACK 3 4"},
		{"nack built", AppendID(AppendNack(nil), "5"), "NACK 5"},
		{"upload credit", AppendUploadCredit(nil, "42", 65536), "UCREDIT 42 65536"},
		{"credit", AppendCredit(nil, 42, 262144), "CREDIT 42 262144"},
		{"credit max id", AppendCredit(nil, 1<<64-1, 1), "CREDIT 18446744073709551615 1"},
		{"disconnect", AppendDisconnect(nil, 9), "DISCONNECT 9"},
		{"req", AppendReq(nil, []byte("uuid 9 / 2:{},0:,")), "REQ uuid 9 / 2:{},0:,"},
		{"body head", AppendBodyHead(nil, 9), "BODY 9 "},
		{"body", AppendBody(nil, 9, []byte("a b\x00\n")), "BODY 9 a b\x00\n"},
		{"body empty", AppendBody(nil, 9, nil), "BODY 9 "},
		{"body end", AppendBodyEnd(nil, 9), "BODYEND 9"},
		{"body err", AppendBodyErr(nil, 9), "BODYERR 9"},
		{"pause", AppendPause(nil), "PAUSE"},
		{"resume", AppendResume(nil), "RESUME"},
		{"welcome", AppendWelcome(nil), "WELCOME"},
		{"confirm", AppendConfirm(nil, 7, 1<<64-1), "CONFIRM 7 18446744073709551615"},
		{"confirm built", AppendUintID(AppendConfirm(nil), 8), "CONFIRM 8"},
		{"appends", AppendHeartbeat([]byte("x")), "xHB"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if string(tt.got) != tt.want {
				t.Fatalf("got %q, want %q", tt.got, tt.want)
			}
		})
	}
}

func TestVerbWords(t *testing.T) {
	want := map[Verb]string{
		Hello: "HELLO", Heartbeat: "HB", Ack: "ACK", Nack: "NACK", Bye: "BYE",
		UploadCredit: "UCREDIT", Reset: "RESET", Credit: "CREDIT", Disconnect: "DISCONNECT",
		Req: "REQ", Body: "BODY", BodyEnd: "BODYEND", BodyErr: "BODYERR", Pause: "PAUSE", Resume: "RESUME",
		Welcome: "WELCOME", Confirm: "CONFIRM",
	}
	if len(want) != int(verbCount)-1 {
		t.Fatalf("%d verbs pinned, %d defined", len(want), verbCount-1)
	}
	for v, w := range want {
		if v.String() != w {
			t.Errorf("verb %d spelled %q, want %q", v, v.String(), w)
		}
		if got := lookupVerb([]byte(w)); got != v {
			t.Errorf("lookup %q = %d, want %d", w, got, v)
		}
		fromWorker := v <= Reset
		if v.FromWorker() != fromWorker {
			t.Errorf("%s.FromWorker() = %v", v, v.FromWorker())
		}
	}
	if VerbUnknown.String() != "" || Verb(200).String() != "" {
		t.Error("no verb must spell nothing")
	}
	for _, w := range []string{"", "hello", "Hb", "ACKS", "BODYEN", " HB"} {
		if v := lookupVerb([]byte(w)); v != VerbUnknown {
			t.Errorf("lookup %q = %s, want unknown", w, v)
		}
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		msg  string
		want Message
		err  error
	}{
		{"HELLO 8", Message{Verb: Hello, N: 8}, nil},
		{"HELLO 0", Message{Verb: Hello}, nil},
		{"HELLO 8 zmqx/2", Message{Verb: Hello, N: 8}, nil},
		{"HELLO", Message{Verb: Hello}, ErrMalformed},
		{"HELLO -1", Message{Verb: Hello}, ErrMalformed},
		{"HELLO +1", Message{Verb: Hello}, ErrMalformed},
		{"HELLO 9223372036854775808", Message{Verb: Hello}, ErrMalformed},
		{"HELLO 9223372036854775807", Message{Verb: Hello, N: 1<<63 - 1}, nil},
		{"HB", Message{Verb: Heartbeat}, nil},
		{"HB later", Message{Verb: Heartbeat}, nil},
		{"BYE", Message{Verb: Bye}, nil},
		{"RESET", Message{Verb: Reset}, nil},
		{"PAUSE", Message{Verb: Pause}, nil},
		{"RESUME", Message{Verb: Resume}, nil},
		{"WELCOME", Message{Verb: Welcome}, nil},
		{"WELCOME zmqx/2", Message{Verb: Welcome}, nil},
		{"ACK 7", Message{Verb: Ack, IDs: b("7")}, nil},
		{"ACK 7 12 3", Message{Verb: Ack, IDs: b("7 12 3")}, nil},
		{"ACK", Message{Verb: Ack}, ErrMalformed},
		{"ACK ", Message{Verb: Ack, IDs: b("")}, ErrMalformed},
		{"ACK 7 ", Message{Verb: Ack, IDs: b("7 ")}, ErrMalformed},
		{"ACK 7  8", Message{Verb: Ack, IDs: b("7  8")}, ErrMalformed},
		{"ACK 7 x", Message{Verb: Ack, IDs: b("7 x")}, ErrMalformed},
		{"ACK 123456789012345678901", Message{Verb: Ack, IDs: b("123456789012345678901")}, ErrMalformed},
		{"NACK 5 6", Message{Verb: Nack, IDs: b("5 6")}, nil},
		{"CONFIRM 5 6", Message{Verb: Confirm, IDs: b("5 6")}, nil},
		{"CONFIRM", Message{Verb: Confirm}, ErrMalformed},
		{"CONFIRM 5 x", Message{Verb: Confirm, IDs: b("5 x")}, ErrMalformed},
		{"UCREDIT 42 65536", Message{Verb: UploadCredit, ID: b("42"), N: 65536}, nil},
		{"UCREDIT 42 0", Message{Verb: UploadCredit, ID: b("42")}, ErrMalformed},
		{"UCREDIT 42", Message{Verb: UploadCredit, ID: b("42")}, ErrMalformed},
		{"CREDIT 42 262144", Message{Verb: Credit, ID: b("42"), N: 262144}, nil},
		{"CREDIT 42 -5", Message{Verb: Credit, ID: b("42")}, ErrMalformed},
		{"CREDIT x 5", Message{Verb: Credit, ID: b("x"), N: 5}, ErrMalformed},
		{"CREDIT 42 5 6", Message{Verb: Credit, ID: b("42")}, ErrMalformed},
		{"DISCONNECT 9", Message{Verb: Disconnect, ID: b("9")}, nil},
		{"DISCONNECT 9 10", Message{Verb: Disconnect, ID: b("9 10")}, ErrMalformed},
		{"DISCONNECT", Message{Verb: Disconnect}, ErrMalformed},
		{"BODYEND 9", Message{Verb: BodyEnd, ID: b("9")}, nil},
		{"BODYERR 9", Message{Verb: BodyErr, ID: b("9")}, nil},
		{"BODYERR -9", Message{Verb: BodyErr, ID: b("-9")}, ErrMalformed},
		{"BODY 9 a b\x00", Message{Verb: Body, ID: b("9"), Data: b("a b\x00")}, nil},
		{"BODY 9 ", Message{Verb: Body, ID: b("9"), Data: b("")}, nil},
		{"BODY 9", Message{Verb: Body, ID: b("9")}, nil},
		{"BODY  9", Message{Verb: Body, ID: b(""), Data: b("9")}, ErrMalformed},
		{"REQ u 1 / 2:{},0:,", Message{Verb: Req, Data: b("u 1 / 2:{},0:,")}, nil},
		{"REQ", Message{Verb: Req}, ErrMalformed},
		{"REQ ", Message{Verb: Req, Data: b("")}, ErrMalformed},
		{"", Message{}, ErrUnknownVerb},
		{"WAT 1", Message{}, ErrUnknownVerb},
		{"hb", Message{}, ErrUnknownVerb},
		{" HB", Message{}, ErrUnknownVerb},
	}
	for _, tt := range tests {
		t.Run(tt.msg, func(t *testing.T) {
			got, err := Parse([]byte(tt.msg))
			if !errors.Is(err, tt.err) || (err == nil) != (tt.err == nil) {
				t.Fatalf("error %v, want %v", err, tt.err)
			}
			if got.Verb != tt.want.Verb || !sameBytes(got.ID, tt.want.ID) || !sameBytes(got.IDs, tt.want.IDs) ||
				!sameBytes(got.Data, tt.want.Data) || (err == nil && got.N != tt.want.N) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func b(s string) []byte { return []byte(s) }

// sameBytes compares contents, and nil (absent) against present.
func sameBytes(x, y []byte) bool { return (x == nil) == (y == nil) && bytes.Equal(x, y) }

func TestNextID(t *testing.T) {
	var got []string
	for id, rest := NextID([]byte("1 22 333")); id != nil; id, rest = NextID(rest) {
		got = append(got, string(id))
	}
	if want := []string{"1", "22", "333"}; !equalStrings(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	if id, _ := NextID(nil); id != nil {
		t.Fatal("ids from nothing")
	}
}

func equalStrings(x, y []string) bool {
	if len(x) != len(y) {
		return false
	}
	for i := range x {
		if x[i] != y[i] {
			return false
		}
	}
	return true
}

func TestHeaderValues(t *testing.T) {
	at := time.UnixMilli(1_765_000_000_123)
	v := string(AppendDeadline(nil, at))
	if v != "1765000000123" {
		t.Fatalf("deadline %q", v)
	}
	if ms, ok := ParseDeadline(v); !ok || ms != at.UnixMilli() {
		t.Fatalf("deadline read back as %d %v", ms, ok)
	}
	tests := []struct {
		v  string
		n  int64
		ok bool
	}{
		{"262144", 262144, true},
		{"1", 1, true},
		{"0", 0, false},
		{"-1", -1, false},
		{"", 0, false},
		{"x", 0, false},
		{"9223372036854775808", 0, false},
	}
	for _, tt := range tests {
		if n, ok := ParseWindow(tt.v); ok != tt.ok || (ok && n != tt.n) {
			t.Errorf("window %q: %d %v, want %d %v", tt.v, n, ok, tt.n, tt.ok)
		}
		if n, ok := ParseDeadline(tt.v); ok != tt.ok || (ok && n != tt.n) {
			t.Errorf("deadline %q: %d %v, want %d %v", tt.v, n, ok, tt.n, tt.ok)
		}
	}
}

// The control channel carries an ACK and a CREDIT per request: neither
// building nor reading one may allocate.
func TestNoAllocations(t *testing.T) {
	buf := make([]byte, 0, 256)
	msgs := [][]byte{[]byte("ACK 1 2 3"), []byte("CREDIT 42 65536"), []byte("BODY 9 data"), []byte("HB"), []byte("WAT")}
	allocs := testing.AllocsPerRun(100, func() {
		buf = AppendAck(buf[:0], "1", "2")
		buf = AppendCredit(buf[:0], 42, 65536)
		buf = AppendUploadCredit(buf[:0], "42", 65536)
		buf = AppendBody(buf[:0], 9, buf[:0])
		buf = AppendHello(buf[:0], 64)
		for _, m := range msgs {
			_, _ = Parse(m)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per run", allocs)
	}
}
