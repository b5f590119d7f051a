// Package zmqx is the zmqx/1 control protocol, this project's extension to
// Mongrel2's handler protocol: the one place where its verbs, its trusted
// request headers and its message grammar are spelled. The Caddy module (the
// front end) and workerkit (the worker) both build and read control messages
// with it, so the two cannot drift apart. The specification, written for
// someone implementing a worker in another language, is docs/zmqx.md.
//
// The control channel is a ZeroMQ ROUTER bound by the front end; every worker
// connects one DEALER whose identity is its worker id. A message is one frame
// of ASCII text: a verb, then its arguments separated by single spaces.
//
//	worker -> front end: HELLO <max_concurrent> | HB | BYE | RESET |
//	                     ACK <conn_id> [<conn_id> ...] | NACK <conn_id> [<conn_id> ...] |
//	                     UCREDIT <conn_id> <bytes>
//	front end -> worker: CREDIT <conn_id> <bytes> | DISCONNECT <conn_id> | REQ <request frame> |
//	                     BODY <conn_id> <bytes> | BODYEND <conn_id> | BODYERR <conn_id> |
//	                     PAUSE | RESUME | WELCOME | CONFIRM <conn_id> [<conn_id> ...]
//
// A request frame on the request socket carries the trusted headers
// ZMQX_WINDOW, ZMQX_DEADLINE, ZMQX_CONFIRM and ZMQX_BODY (HeaderWindow,
// HeaderDeadline, HeaderConfirm, HeaderBody); clients cannot send upper-case header names through the front
// end, so a worker can trust them.
//
// The Append functions append one message to a buffer and never allocate
// beyond growing it; Parse reads one without allocating, its fields aliasing
// the message.
package zmqx
