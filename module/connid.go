package caddyzmq

import (
	crand "crypto/rand"
	"math/rand/v2"
)

// Connection ids are unguessable: whoever does not hold a request (another
// worker, a peer on the control endpoint) cannot name it in a forged reply
// or an ACK, NACK, UCREDIT or RESET, with or without CURVE. They stay below
// 2^53 for handlers that keep ids as doubles, and never repeat in practice
// (across restarts too, which a late reply of a previous process needs).

const connIDMask = 1<<53 - 1

// newConnIDSource seeds a ChaCha8 stream (a cryptographically strong
// generator) from the system's randomness.
func newConnIDSource() *rand.ChaCha8 {
	var seed [32]byte
	_, _ = crand.Read(seed[:]) // never fails (crypto/rand panics instead)
	return rand.NewChaCha8(seed)
}

// nextConnID draws an id not in use; t.mu is held.
func (t *transport) nextConnID() uint64 {
	if t.ids == nil { // a transport made by a test
		t.ids = newConnIDSource()
	}
	for {
		id := t.ids.Uint64() & connIDMask
		if _, taken := t.pending[id]; !taken && id != 0 {
			return id
		}
	}
}
