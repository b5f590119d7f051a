package workerkit

import (
	"context"
	"strconv"
)

// A front end can send one request to every live worker of a pool at once
// (the zmq handler's broadcast option, a scatter-gather): to invalidate a
// cache everywhere, collect statistics, reload a setting. Handlers answer
// it like any other request; the trusted key ZMQX_BROADCAST tells them it
// is one, which BroadcastFromContext reports.

type broadcastCtxKey struct{}

// withBroadcast marks ctx as a broadcast request's, to which asked workers
// were sent (the value of ZMQX_BROADCAST; 0 if it is not a number).
func withBroadcast(ctx context.Context, value string) context.Context {
	asked, err := strconv.Atoi(value)
	if err != nil || asked < 0 {
		asked = 0
	}
	return context.WithValue(ctx, broadcastCtxKey{}, asked)
}

// BroadcastFromContext reports whether the request of ctx (r.Context()) is
// part of a broadcast, and to how many workers it was sent (0 if the front
// end did not say).
func BroadcastFromContext(ctx context.Context) (asked int, ok bool) {
	asked, ok = ctx.Value(broadcastCtxKey{}).(int)
	return asked, ok
}
