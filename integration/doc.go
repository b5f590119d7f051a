// Package integration holds end-to-end tests that run the built binaries
// (bin/caddy with the zmq module, bin/testworker, bin/hello-worker), a real
// Mongrel2 and a Python Mongrel2 handler against each other on loopback.
//
// Run them with `make test` (which builds everything first). Without
// ZMQ_INTEGRATION=1 and without bin/caddy, the tests skip, so a plain
// `go test ./...` still works; with ZMQ_INTEGRATION=1 a missing binary is a
// failure.
package integration
