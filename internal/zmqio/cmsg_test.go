package zmqio

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"
)

// A CBuf filled by Go arrives as sent, whole or in part, as the last part
// of a multipart message too.
func TestSendOwned(t *testing.T) {
	tests := []struct {
		name string
		size int
		n    int
	}{
		{"empty", 16, 0},
		{"small", 16, 5},
		{"part of a big buffer", 256 << 10, 100_000},
		{"whole big buffer", 256 << 10, 256 << 10},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tx, rx := pair(t)
			want := bytes.Repeat([]byte{byte('a' + i)}, tc.n)
			b := NewCBuf(tc.size)
			copy(b.Bytes(), want)
			if _, err := tx.SendBytes([]byte("id"), zmq.SNDMORE); err != nil {
				t.Fatal(err)
			}
			if err := SendOwned(tx, b, tc.n, 0); err != nil {
				t.Fatal(err)
			}
			b.Free() // already given away: a no-op
			parts, err := rx.RecvMessageBytes(0)
			if err != nil {
				t.Fatal(err)
			}
			if len(parts) != 2 || string(parts[0]) != "id" || !bytes.Equal(parts[1], want) {
				t.Fatalf("got %d parts, last %d bytes; want [id, %d bytes]", len(parts), len(parts[len(parts)-1]), tc.n)
			}
		})
	}
}

// A send that fails (a PUSH with no peer, DONTWAIT) reports EAGAIN and
// leaves the buffer, intact, to the caller; Free then releases it.
func TestSendOwnedFails(t *testing.T) {
	ctx, err := zmq.NewContext()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ctx.Term() }()
	sock, err := ctx.NewSocket(zmq.PUSH)
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	_ = sock.SetLinger(0)
	// Each buffer is written whole, so that a leak (256 MiB in all) shows
	// in the resident set.
	before := rss(t)
	for i := range 1000 {
		b := NewCBuf(256 << 10)
		p := b.Bytes()
		for j := range p {
			p[j] = byte(i + j)
		}
		if err := SendOwned(sock, b, 1000, zmq.DONTWAIT); zmq.AsErrno(err) != zmq.Errno(syscall.EAGAIN) {
			t.Fatalf("err = %v, want EAGAIN", err)
		}
		if b.p == nil {
			t.Fatal("a failed SendOwned took the buffer")
		}
		if p := b.Bytes(); p[0] != byte(i) || p[len(p)-1] != byte(i+len(p)-1) {
			t.Fatal("a failed SendOwned changed or freed the buffer")
		}
		b.Free()
	}
	if grew := rss(t) - before; grew > 64<<20 {
		t.Errorf("resident set grew %d MiB over 1000 failed sends of 256 KiB: the buffers leak", grew>>20)
	}
	unsent := NewCBuf(64)
	unsent.Free()
	unsent.Free()
	if unsent.p != nil {
		t.Fatal("Free left the buffer")
	}
}

// rss is this process's resident set, in bytes.
func rss(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		t.Skip("no /proc/self/statm:", err)
	}
	f := strings.Fields(string(b))
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return pages * int64(os.Getpagesize())
}

// Buffers released after a burst, by Free on Go threads or by libzmq once
// sent, go back to the kernel beyond the cache's bound: the mappings left
// are exactly the cached blocks, whatever the size of the burst. A buffer
// larger than a block is never cached.
func TestCBufCacheBounded(t *testing.T) {
	tx, rx := pair(t)
	const burst = 3 * CBufCacheMax
	for round := range 2 {
		bufs := make([]*CBuf, burst)
		for i := range bufs {
			bufs[i] = NewCBuf(CBufBlock - i) // every size up to a block takes one
			bufs[i].Bytes()[0] = byte(i)     // touched: resident until unmapped
		}
		if mapped, _ := CBufStats(); mapped < burst {
			t.Fatalf("round %d: %d mappings with %d buffers in use", round, mapped, burst)
		}
		for i, b := range bufs {
			if i%2 == 0 {
				b.Free()
				continue
			}
			if err := SendOwned(tx, b, 1, 0); err != nil {
				t.Fatal(err)
			}
		}
		for range burst / 2 {
			if _, err := rx.RecvBytes(0); err != nil {
				t.Fatal(err)
			}
		}
		waitCBufs(t, CBufCacheMax, CBufCacheMax)
	}
	// A buffer larger than the largest class is unmapped on release even
	// while the caches have room (one block taken out of it makes room).
	const largest = CBufLargeMin << (cBufLargeClasses - 1)
	if m := mappingSize(largest + 1); m <= largest || m%os.Getpagesize() != 0 {
		t.Fatalf("a %d-byte buffer maps %d bytes", largest+1, m)
	}
	block, big := NewCBuf(CBufBlock), NewCBuf(largest+1)
	waitCBufs(t, CBufCacheMax+1, CBufCacheMax-1)
	big.Free()
	waitCBufs(t, CBufCacheMax, CBufCacheMax-1)
	block.Free()
	waitCBufs(t, CBufCacheMax, CBufCacheMax)
}

// Buffers larger than a block take power-of-two mappings that are kept
// for the next buffer of their class, up to CBufLargeCacheMax bytes, and
// unmapped about a second after the last large buffer was taken.
func TestCBufLargeCache(t *testing.T) {
	for _, tc := range []struct{ size, mapping int }{
		{CBufBlock + 1, CBufLargeMin},
		{CBufLargeMin, CBufLargeMin},
		{CBufLargeMin + 1, 2 * CBufLargeMin},
		{16<<20 + 300, 32 << 20},
	} {
		if m := mappingSize(tc.size); m != tc.mapping {
			t.Fatalf("a %d-byte buffer maps %d bytes, want %d", tc.size, m, tc.mapping)
		}
	}
	baseMapped, baseCached := waitLargeDropped(t)
	largeDropDelay = time.Hour // dropped below, when the test says
	defer func() { largeDropDelay = trimDelay }()
	tx, rx := pair(t)
	a := NewCBuf(CBufLargeMin + 1)
	a.Bytes()[CBufLargeMin] = 1
	if err := SendOwned(tx, a, CBufLargeMin+1, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := rx.RecvBytes(0); err != nil {
		t.Fatal(err)
	}
	waitCBufs(t, baseMapped+1, baseCached+1) // released by libzmq, kept
	b := NewCBuf(2 * CBufLargeMin)           // the same class: reused
	if m, c := CBufStats(); m != baseMapped+1 || c != baseCached {
		t.Fatalf("%d mapped, %d cached after reuse; want %d, %d", m, c, baseMapped+1, baseCached)
	}
	// Past the bound, released buffers are unmapped.
	n := CBufLargeCacheMax/(2*CBufLargeMin) + 2
	bufs := []*CBuf{b}
	for len(bufs) < n {
		bufs = append(bufs, NewCBuf(2*CBufLargeMin))
	}
	for _, b := range bufs {
		b.Free()
	}
	if _, c := CBufStats(); c != baseCached+CBufLargeCacheMax/(2*CBufLargeMin) {
		t.Fatalf("%d cached after releasing %d large buffers; want the bound, %d", c, n, baseCached+CBufLargeCacheMax/(2*CBufLargeMin))
	}
	dropLarge()
	waitCBufs(t, baseMapped, baseCached)
}

// waitLargeDropped waits until no large mapping is cached, and returns
// CBufStats then.
func waitLargeDropped(t *testing.T) (mapped, cached int) {
	t.Helper()
	eventually(t, "large mappings never dropped", func() bool {
		return !largeDropPending.Load()
	})
	return CBufStats()
}

// waitCBufs waits until CBufStats reports mapped and cached: libzmq
// releases sent buffers on its I/O thread, a moment after the receive.
func waitCBufs(t *testing.T, mapped, cached int) {
	t.Helper()
	eventually(t, fmt.Sprintf("CBufStats never reported %d mapped, %d cached", mapped, cached), func() bool {
		m, c := CBufStats()
		return m == mapped && c == cached
	})
}
