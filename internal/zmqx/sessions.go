package zmqx

// Trusted request headers of thread-pinned sessions and broadcasts. The
// front end writes its own keys in upper case and lower-cases every client
// header name, so a client can never send one of these.
const (
	// HeaderSession carries the front end's affinity session key (the
	// cookie or header value named by the zmq handler's affinity), so that
	// a worker can run all requests of one session on one thread
	// (workerkit.PinnedSessions). Absent when the route has no affinity or
	// the request names no session.
	HeaderSession = "ZMQX_SESSION"
	// HeaderBroadcast marks a request that is one of a scatter-gather: the
	// same request sent to every live worker of the pool. Its value is the
	// number of workers asked.
	HeaderBroadcast = "ZMQX_BROADCAST"
)
