package zmqx

import (
	"bytes"
	"strconv"
	"testing"
)

// FuzzParse checks that Parse never panics, that what it accepts is built
// back by the Append functions into a message that parses to the same
// Message, and that its fields alias the message.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"HELLO 8", "HB", "BYE", "RESET", "ACK 1 2 3", "NACK 4", "UCREDIT 5 100",
		"CREDIT 6 262144", "DISCONNECT 7", "REQ u 8 / 2:{},0:,", "BODY 9 a b", "BODYEND 9",
		"BODYERR 9", "PAUSE", "RESUME", "WELCOME", "WELCOME x", "CONFIRM 10 11", "", "ACK 1  2", "CREDIT 1 99999999999999999999",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		m, err := Parse(msg)
		if err != nil {
			return
		}
		for _, field := range [][]byte{m.ID, m.IDs, m.Data} {
			if len(field) > 0 && !bytes.Contains(msg, field) {
				t.Fatalf("field %q does not come from %q", field, msg)
			}
		}
		again, err := Parse(rebuild(t, m))
		if err != nil {
			t.Fatalf("rebuilt %q does not parse: %v", rebuild(t, m), err)
		}
		if again.Verb != m.Verb || again.N != m.N || !bytes.Equal(again.ID, m.ID) ||
			!bytes.Equal(again.IDs, m.IDs) || !bytes.Equal(again.Data, m.Data) {
			t.Fatalf("round trip of %q changed it: %+v vs %+v", msg, again, m)
		}
	})
}

// rebuild builds m with the Append functions.
func rebuild(t *testing.T, m Message) []byte {
	id := func() uint64 {
		n, err := strconv.ParseUint(string(m.ID), 10, 64)
		if err != nil {
			// A 20-digit id beyond uint64: valid on the wire, built by
			// hand here.
			return 0
		}
		return n
	}
	switch m.Verb {
	case Hello:
		return AppendHello(nil, int(m.N))
	case Heartbeat:
		return AppendHeartbeat(nil)
	case Bye:
		return AppendBye(nil)
	case Reset:
		return AppendReset(nil)
	case Pause:
		return AppendPause(nil)
	case Resume:
		return AppendResume(nil)
	case Welcome:
		return AppendWelcome(nil)
	case Ack, Nack:
		var out []byte
		if m.Verb == Ack {
			out = AppendAck(nil)
		} else {
			out = AppendNack(nil)
		}
		for id, rest := NextID(m.IDs); id != nil; id, rest = NextID(rest) {
			out = AppendID(out, string(id))
		}
		return out
	case Confirm:
		// Front-end ids are integers: ids with leading zeros or beyond
		// uint64 are rebuilt by hand.
		out := AppendConfirm(nil)
		for id, rest := NextID(m.IDs); id != nil; id, rest = NextID(rest) {
			if n, err := strconv.ParseUint(string(id), 10, 64); err == nil && strconv.FormatUint(n, 10) == string(id) {
				out = AppendUintID(out, n)
			} else {
				out = AppendID(out, string(id))
			}
		}
		return out
	case UploadCredit:
		return AppendUploadCredit(nil, string(m.ID), m.N)
	case Req:
		return AppendReq(nil, m.Data)
	}
	// The front end's messages number connections with integers: ids
	// with leading zeros or beyond uint64 are rebuilt by hand.
	if n := id(); strconv.FormatUint(n, 10) != string(m.ID) {
		return append(append([]byte(m.Verb.String()+" "), m.ID...), tail(m)...)
	}
	switch m.Verb {
	case Credit:
		return AppendCredit(nil, id(), m.N)
	case Disconnect:
		return AppendDisconnect(nil, id())
	case Body:
		return AppendBody(nil, id(), m.Data)
	case BodyEnd:
		return AppendBodyEnd(nil, id())
	case BodyErr:
		return AppendBodyErr(nil, id())
	}
	t.Fatalf("verb %d parsed but not rebuilt", m.Verb)
	return nil
}

func tail(m Message) []byte {
	switch m.Verb {
	case Credit:
		return []byte(" " + strconv.FormatInt(m.N, 10))
	case Body:
		return append([]byte(" "), m.Data...)
	}
	return nil
}
