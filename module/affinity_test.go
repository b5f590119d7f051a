package caddyzmq

import (
	"encoding/json"
	"testing"
	"time"
)

// TestAffinityTTLJSON: the JSON ttl is a Caddy duration (a string with
// Caddy's units, or nanoseconds); a bad one is an error, never ignored.
func TestAffinityTTLJSON(t *testing.T) {
	for _, tc := range []struct {
		json    string
		want    time.Duration
		wantErr bool
	}{
		{json: `{"source":"cookie","name":"sid"}`, want: defaultAffinityTTL},
		{json: `{"source":"cookie","name":"sid","ttl":"1d"}`, want: 24 * time.Hour},
		{json: `{"source":"cookie","name":"sid","ttl":"90m"}`, want: 90 * time.Minute},
		{json: `{"source":"cookie","name":"sid","ttl":1000000000}`, want: time.Second},
		{json: `{"source":"cookie","name":"sid","ttl":"soon"}`, wantErr: true},
		{json: `{"source":"cookie","name":"sid","ttl":"-1h"}`, wantErr: true},
	} {
		t.Run(tc.json, func(t *testing.T) {
			var a Affinity
			err := json.Unmarshal([]byte(tc.json), &a)
			if err == nil {
				err = a.validate()
			}
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if err == nil && a.ttl() != tc.want {
				t.Errorf("ttl %v, want %v", a.ttl(), tc.want)
			}
		})
	}
}

// TestPinCountByWorker: /zmq/pools' affinity_sessions counts each worker's
// pins, not those idle past the TTL.
func TestPinCountByWorker(t *testing.T) {
	p := newPinTable(time.Hour)
	for s, w := range map[string]string{"alice": "wk-1", "bob": "wk-1", "carol": "wk-2", "dave": "wk-2"} {
		p.set(s, w)
	}
	p.mu.Lock()
	p.items["dave"].Value.(*pin).used = time.Now().Add(-2 * time.Hour)
	p.mu.Unlock()
	got := p.countByWorker()
	if len(got) != 2 || got["wk-1"] != 2 || got["wk-2"] != 1 {
		t.Fatalf("counts %v, want wk-1: 2, wk-2: 1 (dave expired)", got)
	}
}
