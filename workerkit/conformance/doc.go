// Package conformance checks a worker against zmqx/1, the control protocol
// of docs/zmqx.md: it plays the front end, binding the request (PUSH), reply
// (SUB) and control (ROUTER) sockets, sends the worker requests and control
// messages, and checks what comes back. It speaks only ZeroMQ, so the worker
// may be written in any language; the command zmqx-conformance
// (workerkit/cmd/zmqx-conformance) runs it from a shell.
//
// In a Go test:
//
//	func TestMyWorkerConforms(t *testing.T) {
//		conformance.Test(t, conformance.Config{}, func(ep conformance.Endpoints) (stop func()) {
//			// start the worker connected to ep.Requests, ep.Replies, ep.Control
//			return func() { /* make it drain and wait for it to exit */ }
//		})
//	}
//
// or Start, Kit.Endpoints, Kit.Run and Report.Table for a report of one's own.
//
// # What the worker's application must answer
//
// The cases need no special handler: GET Config.Path (default "/") must
// answer with a non-empty body. Optional paths exercise more: BigPath (a
// large response, for the credit case), HoldPath (a handler that waits until
// its request is cancelled; without it requests are held by withholding
// reply credit) and UploadPath (a handler that reads its whole body).
//
// # Cases, in the order they run
//
//   - mongrel2/round-trip: a plain request gets one well-formed reply: this
//     front end's sender id, exactly the request's connection id, a complete
//     HTTP/1.x response.
//   - mongrel2/disconnect-notice: Mongrel2's disconnect notice for a
//     connection the worker never saw gets no reply, and the worker goes on.
//   - zmqx/hello: the first control message is HELLO <max_concurrent>.
//   - zmqx/heartbeat: over one and a half leases the worker is never silent
//     for the lease (1 s), and sends HB.
//   - zmqx/ignores-unknown: an unknown verb and an unknown ZMQX_ header
//     change nothing: the request is acknowledged and served.
//   - zmqx/ack: every request with ZMQX_WINDOW is acknowledged; the plain one
//     of the first case is not.
//   - zmqx/deadline: a request past its ZMQX_DEADLINE gets neither ACK nor
//     reply; the one sent after it is served.
//   - zmqx/deadline-queued: a request that waits for a handler slot (all
//     busy) past its deadline is not run once a slot frees.
//   - zmqx/confirm: a POST marked ZMQX_CONFIRM is acknowledged but not run
//     until its ACK is answered with CONFIRM, and not run at all when it is
//     answered with DISCONNECT.
//   - zmqx/credit: with a window of a quarter of the response, the reply
//     stays within its credit (no frame while outstanding bytes plus the
//     frame exceed the window, except one frame when nothing is
//     outstanding), pauses, and completes once CREDIT comes.
//   - zmqx/max-concurrent: with every slot held, no more than max_concurrent
//     requests are acknowledged and unfinished at once.
//   - zmqx/disconnect: DISCONNECT, and then the Mongrel2 notice, each cancel
//     a running request: a waiting request takes its slot.
//   - zmqx/pause-resume: after PAUSE requests are handed back with NACK and
//     none is started; after RESUME they are served and acknowledged again.
//   - zmqx/upload: a streamed body (ZMQX_BODY: stream, then BODY and BODYEND
//     within the credit) reaches the worker, which grants UCREDIT as its
//     handler reads, never more than it received, and answers.
//   - zmqx/welcome: on a new control connection (the kit binds its
//     control socket anew), the worker takes no request before the kit
//     answers its HELLO with WELCOME, and serves it after.
//   - zmqx/bye: a worker told to stop (Config.Stop) says BYE.
//
// A worker that never speaks on the control endpoint (a plain Mongrel2
// handler) is reported NoControl for the zmqx cases, not failed. A case
// waits at most Config.Timeout for what the worker must do, and watches
// Config.Quiet for what it must not do; a correct worker passes however
// slow the machine, a broken one is caught within those bounds.
package conformance
