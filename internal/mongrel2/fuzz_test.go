package mongrel2

import (
	"bytes"
	"testing"
)

// FuzzParseRequest checks the request parser never panics, and that what it
// accepts survives a re-encode and re-parse unchanged.
func FuzzParseRequest(f *testing.F) {
	f.Add([]byte(`u-1 7 / 51:{"PATH":"/","host":"localhost:6767","METHOD":"GET"},0:,`))
	f.Add([]byte(`u-1 7 / 26:4:PATH,1:/,6:METHOD,3:GET,}2:ab,`))
	f.Add([]byte(`u 1 / 31:{"a":"\u00e9\ud83d\ude00\ud800x"},0:,`))
	f.Add([]byte(`u 1 / 24:{"c":["a","b"],"n":12},0:,`))
	f.Add(AppendDisconnect(nil, "u", "1"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		r, err := ParseRequest(msg)
		if err != nil {
			return
		}
		for _, format := range []HeaderFormat{FormatJSON, FormatTNetString} {
			var e HeaderEncoder
			e.Reset(format)
			for _, h := range r.Headers {
				if len(h.Values) == 1 {
					e.Add(h.Name, h.Values[0])
				} else {
					e.AddList(h.Name, h.Values)
				}
			}
			again, err := ParseRequest(AppendRequest(nil, r.Sender, r.ConnID, r.Path, e.Bytes(), r.Body))
			if err != nil {
				t.Fatalf("re-encoded %v request does not parse: %v", format, err)
			}
			if again.Sender != r.Sender || again.ConnID != r.ConnID || again.Path != r.Path || !bytes.Equal(again.Body, r.Body) {
				t.Fatalf("%v round trip changed the frame: %+v vs %+v", format, again, r)
			}
			if len(again.Headers) != len(r.Headers) {
				t.Fatalf("%v round trip changed the header count", format)
			}
			for i := range r.Headers {
				a, b := again.Headers[i], r.Headers[i]
				if a.Name != b.Name || len(a.Values) != len(b.Values) && len(b.Values) != 0 {
					t.Fatalf("%v round trip changed header %d: %q vs %q", format, i, a, b)
				}
			}
		}
	})
}

// FuzzParseReply checks the reply parser never panics and that accepted
// replies re-encode to the same bytes.
func FuzzParseReply(f *testing.F) {
	f.Add([]byte("u 1:7, hi"))
	f.Add([]byte("u 4:7 12, "))
	f.Add([]byte("u 3:7  , x"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		sender, ids, body, err := ParseReply(msg)
		if err != nil {
			return
		}
		var list []string
		for id, r := NextID(ids); id != nil; id, r = NextID(r) {
			if _, ok := ParseUint(id); !ok && len(id) <= 20 {
				t.Fatalf("accepted non-numeric id %q", id)
			}
			list = append(list, string(id))
		}
		if got := AppendReply(nil, string(sender), list, body); !bytes.Equal(got, msg) {
			t.Fatalf("re-encode differs:\n got %q\nwant %q", got, msg)
		}
	})
}

// SplitRequest accepts what ParseRequest accepts, minus header blocks that
// do not parse, and splits it the same way.
func FuzzSplitRequest(f *testing.F) {
	f.Add([]byte(`u-1 7 / 51:{"PATH":"/","host":"localhost:6767","METHOD":"GET"},0:,`))
	f.Add([]byte(`u-1 7 / 26:4:PATH,1:/,6:METHOD,3:GET,}2:ab,`))
	f.Add([]byte(`u 1 / 3:{x},0:,`))
	f.Add(AppendDisconnect(nil, "u", "1"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		p, perr := SplitRequest(msg)
		r, err := ParseRequest(msg)
		switch {
		case perr != nil && err == nil:
			t.Fatalf("SplitRequest refused (%v) what ParseRequest took", perr)
		case perr != nil:
			return
		}
		fields, ferr := p.ParseHeaders()
		if (ferr == nil) != (err == nil) {
			t.Fatalf("ParseHeaders: %v, ParseRequest: %v", ferr, err)
		}
		if err != nil {
			return
		}
		if string(p.Sender) != r.Sender || string(p.ConnID) != r.ConnID || string(p.Path) != r.Path ||
			!bytes.Equal(p.Body, r.Body) || len(fields) != len(r.Headers) {
			t.Fatalf("split %+v, parsed %+v", p, r)
		}
	})
}
