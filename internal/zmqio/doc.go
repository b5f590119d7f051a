// Package zmqio is the hot path's access to libzmq, beside
// github.com/pebbe/zmq4: receiving into a caller's buffer in one cgo call
// (Receiver), or keeping a big part in libzmq's memory without a copy
// (RecvKeep, Msg); sending from C memory without a copy (CBuf, SendOwned);
// and waiting for a socket in Go's network poller instead of in a thread
// blocked inside libzmq, alone (Readiness) or in a select with channels
// (Notifier).
//
// Why: pebbe/zmq4's RecvBytes makes four cgo calls and allocates a fresh
// slice per message part, so a 256 KiB reply frame is a 256 KiB garbage
// object (the GC then dominates large downloads); and a goroutine blocked
// in zmq_msg_recv holds an OS thread that libzmq wakes per message, which
// must then find a free P to run on (costly on 2 cores under load). Waiting
// on the socket's ZMQ_FD through the poller lets the goroutine park like any
// network reader and receive with ZMQ_DONTWAIT.
//
// Copies matter for bodies: every hop of a 256 KiB frame through Go memory
// is a memcpy of it, a cost paid per byte of every large body. C memory
// is not the garbage collector's: a CBuf ends in SendOwned or Free, and a
// Msg in Close or, if dropped, a cleanup once it is unreachable.
//
// Freed C memory must also leave the process. CBufs are allocated on Go
// threads and freed on libzmq's I/O thread, which glibc's per-thread arenas
// handle badly (freed blocks stay in the allocating thread's arena), so
// they come from mmap'd blocks with a bounded cache of their own. libzmq's
// receive buffers (Msg) come from its I/O thread's arena; once enough of
// them were freed, a malloc_trim is scheduled (see noteFreed).
//
// The sockets stay pebbe/zmq4 sockets, used by their one owning goroutine;
// this package only needs their libzmq handle (see handle).
package zmqio
