package caddyzmq

import (
	"reflect"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestUnmarshalCaddyfile(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		want    Handler
		wantErr bool
	}{
		{name: "bare", input: `zmq`, want: Handler{}},
		{name: "shorthand", input: `zmq tcp://127.0.0.1:1 tcp://127.0.0.1:2`,
			want: Handler{RequestEndpoint: "tcp://127.0.0.1:1", ReplyEndpoint: "tcp://127.0.0.1:2"}},
		{name: "full", input: `zmq {
			request_endpoint tcp://*:9997
			reply_endpoint ipc:///tmp/replies
			sender_id 34f9ceee-cd52-4b7f-b197-88bf2f0ec378
			header_format tnetstring
			reply_timeout 5s
			stream_timeout 1m
			max_request_body 1MB
			max_buffered_reply 2048
			pattern /app/
			heartbeat off
			control_endpoint tcp://127.0.0.1:9995
			reply_window 512KiB
		}`, want: Handler{
			ControlEndpoint: "tcp://127.0.0.1:9995", ReplyWindow: 512 << 10,
			RequestEndpoint: "tcp://*:9997", ReplyEndpoint: "ipc:///tmp/replies",
			SenderID: "34f9ceee-cd52-4b7f-b197-88bf2f0ec378", HeaderFormat: "tnetstring",
			ReplyTimeout: caddy.Duration(5 * time.Second), StreamTimeout: caddy.Duration(time.Minute),
			MaxRequestBody: 1000000, MaxBufferedReply: 2048, Pattern: "/app/", Heartbeat: -1,
		}},
		{name: "pools", input: `zmq {
			pool a tcp://127.0.0.1:1 tcp://127.0.0.1:2
			pool b {
				request_endpoint tcp://127.0.0.1:3
				reply_endpoint tcp://127.0.0.1:4
				control_endpoint tcp://127.0.0.1:5
			}
			lb_policy cookie zmq_pool
		}`, want: Handler{
			Pools: []Pool{
				{Name: "a", RequestEndpoint: "tcp://127.0.0.1:1", ReplyEndpoint: "tcp://127.0.0.1:2"},
				{Name: "b", RequestEndpoint: "tcp://127.0.0.1:3", ReplyEndpoint: "tcp://127.0.0.1:4", ControlEndpoint: "tcp://127.0.0.1:5"},
			},
			SelectionPolicyRaw: []byte(`{"name":"zmq_pool","policy":"cookie"}`),
		}},
		{name: "no retries", input: "zmq {\n retries 0\n}", want: Handler{Retries: -1}},
		{name: "retries", input: "zmq {\n retries 3\n}", want: Handler{Retries: 3}},
		{name: "bad retries", input: "zmq {\n retries -2\n}", wantErr: true},
		{name: "affinity", input: "zmq {\n affinity cookie sid\n}",
			want: Handler{Affinity: &Affinity{Source: "cookie", Name: "sid"}}},
		{name: "affinity ttl in days", input: "zmq {\n affinity header X-Session 1d\n}",
			want: Handler{Affinity: &Affinity{Source: "header", Name: "X-Session", TTL: caddy.Duration(24 * time.Hour)}}},
		{name: "affinity bad ttl", input: "zmq {\n affinity cookie sid soon\n}", wantErr: true},
		{name: "affinity negative ttl", input: "zmq {\n affinity cookie sid -5m\n}", wantErr: true},
		{name: "affinity bad source", input: "zmq {\n affinity query sid\n}", wantErr: true},
		{name: "bad policy", input: "zmq {\n lb_policy nonsense\n}", wantErr: true},
		{name: "pool bad option", input: "zmq {\n pool a {\n bogus x\n }\n}", wantErr: true},
		{name: "one endpoint", input: `zmq tcp://127.0.0.1:1`, wantErr: true},
		{name: "unknown option", input: "zmq {\n bogus 1\n}", wantErr: true},
		{name: "bad format", input: "zmq {\n header_format xml\n}", wantErr: true},
		{name: "bad duration", input: "zmq {\n reply_timeout soon\n}", wantErr: true},
		{name: "websocket keepalive", input: "zmq {\n websocket_ping_interval 10s\n websocket_idle_timeout 25s\n}",
			want: Handler{WebSocketPingInterval: caddy.Duration(10 * time.Second), WebSocketIdleTimeout: caddy.Duration(25 * time.Second)}},
		{name: "websocket keepalive off", input: "zmq {\n websocket_ping_interval off\n websocket_idle_timeout off\n}",
			want: Handler{WebSocketPingInterval: -1, WebSocketIdleTimeout: -1}},
		{name: "websocket ping bad", input: "zmq {\n websocket_ping_interval often\n}", wantErr: true},
		{name: "bad size", input: "zmq {\n max_request_body lots\n}", wantErr: true},
		{name: "missing arg", input: "zmq {\n sender_id\n}", wantErr: true},
		{name: "extra arg", input: "zmq {\n sender_id a b\n}", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if err == nil && !reflect.DeepEqual(h, tc.want) {
				t.Fatalf("got %+v\nwant %+v", h, tc.want)
			}
		})
	}
}

func TestDefaultSenderIDStable(t *testing.T) {
	a := DefaultSenderID("tcp://127.0.0.1:1", "tcp://127.0.0.1:2")
	if a != DefaultSenderID("tcp://127.0.0.1:1", "tcp://127.0.0.1:2") {
		t.Fatal("not stable")
	}
	if a == DefaultSenderID("tcp://127.0.0.1:3", "tcp://127.0.0.1:2") {
		t.Fatal("does not depend on the endpoints")
	}
	if !senderIDPattern.MatchString(a) || len(a) != 36 {
		t.Fatalf("not a UUID: %q", a)
	}
}
