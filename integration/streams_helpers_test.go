package integration

// Helpers of streams_test.go: the streams Caddy, echo and chat workers with
// the control channel, memory and socket measurements of the processes, and
// the readers and writers of big bodies.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	sKiB = 1 << 10
	sMiB = 1 << 20
	sGiB = 1 << 30
)

// ---------------------------------------------------------------------------
// Caddy and workers.

// startStreamsCaddy runs caddyfiles/streams.Caddyfile (control channel on,
// 2GB bodies, no stream timeout) on free ports.
func startStreamsCaddy(t *testing.T, https bool, env map[string]string) *caddy {
	t.Helper()
	return startCaddy(t, caddyOpts{Config: "caddyfiles/streams.Caddyfile", HTTPS: https, Env: env})
}

// startEchoWorker runs bin/echo-worker on the control channel of c.
func startEchoWorker(t *testing.T, c *caddy, name string) *process {
	t.Helper()
	bin := needFile(t, repoPath("bin", "echo-worker"), "run make build")
	return startProcess(t, name, command(t, bin, "-frontend", c.FrontEndControl()))
}

// chatWorkerBin is bin/chat-worker if make built it, otherwise the chat
// example built now into a directory of the test.
func chatWorkerBin(t *testing.T) string {
	t.Helper()
	if p := repoPath("bin", "chat-worker"); pathExists(p) {
		return p
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = needFile(t, "/usr/local/go/bin/go", "Go is needed to build workerkit/examples/chat (or make bin/chat-worker)")
	}
	out := filepath.Join(t.TempDir(), "chat-worker")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, gobin, "build", "-o", out, "./workerkit/examples/chat")
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./workerkit/examples/chat: %v\n%s", err, b)
	}
	return out
}

func pathExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// startChatWorker runs the chat example on the control channel of c.
func startChatWorker(t *testing.T, c *caddy, bin, name string) *process {
	t.Helper()
	return startProcess(t, name, command(t, bin, "-frontend", c.FrontEndControl(), "-ping", "0"))
}

// waitControlWorkers waits until Caddy has logged n workers joining its
// control channel: from then on large uploads are streamed (every worker
// of the pool speaks zmqx/1) and replies are paced by credit.
func waitControlWorkers(t *testing.T, c *caddy, n int, procs ...*process) {
	t.Helper()
	const joined = "worker joined the control channel"
	err := poll(startTimeout, func() error {
		for _, p := range append([]*process{c.proc}, procs...) {
			if p.Exited() {
				return fmt.Errorf("%s exited: %v", p.name, p.err)
			}
		}
		return nil
	}, func() error {
		if got := strings.Count(c.proc.out.String(), joined); got < n {
			return fmt.Errorf("%d of %d workers joined the control channel", got, n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// waitStatusOK polls url until it answers 200 and check (if any) accepts the body.
func waitStatusOK(t *testing.T, client *http.Client, url string, check func([]byte) error, procs ...*process) {
	t.Helper()
	err := pollGET(client, url, procs, func(resp *http.Response, b []byte) error {
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		if check != nil {
			return check(b)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%s not ready: %v", url, err)
	}
}

// ---------------------------------------------------------------------------
// Process measurements.

// pidOf is the process id of a started process.
func pidOf(p *process) int { return p.cmd.Process.Pid }

// vmRSS reads a process's resident set size from /proc/PID/status.
func vmRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest) // "123456 kB"
			if len(f) == 2 && f[1] == "kB" {
				n, err := strconv.ParseInt(f[0], 10, 64)
				return n * 1024, err
			}
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
}

// rssSampler records the peak RSS of some processes while it runs.
type rssSampler struct {
	t     testing.TB
	names []string
	pids  []int
	base  []int64
	peak  []int64
	last  []int64
	n     int
	stop  chan struct{}
	done  chan struct{}
	mu    sync.Mutex
}

// startRSS takes the baseline RSS of procs now and samples them every
// 10 ms until Stop.
func startRSS(t testing.TB, procs ...*process) *rssSampler {
	t.Helper()
	s := &rssSampler{t: t, stop: make(chan struct{}), done: make(chan struct{})}
	for _, p := range procs {
		rss, err := vmRSS(pidOf(p))
		if err != nil {
			t.Fatalf("RSS of %s: %v", p.name, err)
		}
		s.names = append(s.names, p.name)
		s.pids = append(s.pids, pidOf(p))
		s.base = append(s.base, rss)
		s.peak = append(s.peak, rss)
		s.last = append(s.last, rss)
	}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			s.sample()
			select {
			case <-s.stop:
				s.sample()
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

func (s *rssSampler) sample() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	for i, pid := range s.pids {
		rss, err := vmRSS(pid)
		if err != nil {
			continue // exited: the test notices elsewhere
		}
		s.last[i] = rss
		s.peak[i] = max(s.peak[i], rss)
	}
}

// Stop ends sampling; it is safe to call twice.
func (s *rssSampler) Stop() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
}

// Check stops sampling, logs baseline, peak and growth of every process
// and fails the test if one grew by more than limit.
func (s *rssSampler) Check(what string, limit int64) {
	s.t.Helper()
	s.Stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, name := range s.names {
		growth := s.peak[i] - s.base[i]
		s.t.Logf("%s: %s RSS baseline %s, peak %s, growth %s (%d samples)",
			what, name, fmtMiB(s.base[i]), fmtMiB(s.peak[i]), fmtMiB(growth), s.n)
		if growth > limit {
			s.t.Errorf("%s: %s RSS grew by %s, more than %s", what, name, fmtMiB(growth), fmtMiB(limit))
		}
	}
}

func fmtMiB(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/sMiB) }

func mbPerS(n int64, d time.Duration) float64 { return float64(n) / 1e6 / d.Seconds() }

// tcpWritten returns how many bytes the processes at one end of the
// established TCP connections matching an ss(8) filter (e.g.
// "( dport = :9996 )") have written into them: acknowledged by the peer's
// kernel (tcpi_bytes_acked) plus still queued (Send-Q). ss reads both from
// the kernel, so they count what a process really handed to TCP, whatever
// its own buffers.
func tcpWritten(filter string) (written int64, conns int, err error) {
	out, err := exec.Command("ss", "-tinH", "state", "established", filter).CombinedOutput()
	if err != nil {
		return 0, 0, fmt.Errorf("ss %s: %v: %s", filter, err, out)
	}
	for line := range strings.SplitSeq(string(out), "\n") {
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		if line[0] != ' ' && line[0] != '\t' {
			// Recv-Q Send-Q Local Peer (no State column with a state filter)
			if len(f) < 4 {
				return 0, 0, fmt.Errorf("ss %s: unexpected line %q", filter, line)
			}
			q, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				return 0, 0, fmt.Errorf("ss %s: unexpected line %q", filter, line)
			}
			written += q
			conns++
			continue
		}
		for _, kv := range f {
			if v, ok := strings.CutPrefix(kv, "bytes_acked:"); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				written += n
			}
		}
	}
	return written, conns, nil
}

func portOf(endpoint string) string {
	return endpoint[strings.LastIndexByte(endpoint, ':')+1:]
}

// ---------------------------------------------------------------------------
// Big bodies.

// bigPattern is what echo /big repeats (64 bytes; a 64 KiB write is a
// whole number of them, so the body is the pattern throughout).
const bigPattern = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/\n"

// patternChecker counts the bytes written to it and checks each against
// the position it has in the repeated bigPattern.
type patternChecker struct {
	ref []byte
	n   int64
	bad int64 // offset of the first wrong byte, -1 if none
}

func newPatternChecker() *patternChecker {
	return &patternChecker{ref: bytes.Repeat([]byte(bigPattern), (1<<20)/len(bigPattern)+2), bad: -1}
}

func (c *patternChecker) Write(p []byte) (int, error) {
	written := len(p)
	for len(p) > 0 {
		off := int(c.n % int64(len(bigPattern)))
		k := min(len(p), len(c.ref)-off)
		if c.bad < 0 && !bytes.Equal(p[:k], c.ref[off:off+k]) {
			for i := range k {
				if p[i] != c.ref[off+i] {
					c.bad = c.n + int64(i)
					break
				}
			}
		}
		c.n += int64(k)
		p = p[k:]
	}
	return written, nil
}

// uploadSource generates n bytes without holding them: 64 KiB blocks, each
// a fixed block with its index stamped in, so that a lost, repeated or
// reordered block changes the digest. It hashes what it hands out.
type uploadSource struct {
	n, off int64
	block  []byte
	sum    interface {
		io.Writer
		Sum([]byte) []byte
	}
}

func newUploadSource(n int64) *uploadSource {
	block := make([]byte, 64*sKiB)
	x := uint32(2463534242)
	for i := range block { // xorshift32: not compressible, cheap
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		block[i] = byte(x)
	}
	return &uploadSource{n: n, block: block, sum: sha256.New()}
}

func (u *uploadSource) Read(p []byte) (int, error) {
	if u.off >= u.n {
		return 0, io.EOF
	}
	total := 0
	for len(p) > 0 && u.off < u.n {
		i := u.off % int64(len(u.block))
		if i == 0 {
			binary.BigEndian.PutUint64(u.block[:8], uint64(u.off/int64(len(u.block))))
		}
		k := int(min(int64(len(p)), int64(len(u.block))-i, u.n-u.off))
		copy(p, u.block[i:i+int64(k)])
		u.sum.Write(p[:k])
		u.off += int64(k)
		total += k
		p = p[k:]
	}
	return total, nil
}

// Sum is the hex SHA-256 of everything read so far.
func (u *uploadSource) Sum() string { return fmt.Sprintf("%x", u.sum.Sum(nil)) }

// hideLength hides a reader's type from net/http, so that the request is
// sent chunked (unknown length).
type hideLength struct{ io.Reader }

// ---------------------------------------------------------------------------
// Server-Sent Events.

// sseLine is one line of an event stream and when it was read.
type sseLine struct {
	Text string
	At   time.Time
}

// sseReader reads an event stream line by line in a goroutine.
type sseReader struct {
	lines chan sseLine
	done  chan struct{}
	err   error // why the stream ended; valid after done
}

func readSSE(body io.Reader) *sseReader {
	r := &sseReader{lines: make(chan sseLine, 1024), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		sc := bufio.NewScanner(body)
		for sc.Scan() {
			r.lines <- sseLine{Text: sc.Text(), At: time.Now()}
		}
		r.err = sc.Err()
		if r.err == nil {
			r.err = io.EOF
		}
	}()
	return r
}

// next returns the next line that satisfies match, skipping others, within
// timeout. The stream ending first is an error.
func (r *sseReader) next(timeout time.Duration, match func(string) bool) (sseLine, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		select {
		case l := <-r.lines:
			if match(l.Text) {
				return l, nil
			}
		case <-r.done:
			// Lines read before the end are still in the channel.
			select {
			case l := <-r.lines:
				if match(l.Text) {
					return l, nil
				}
				continue
			default:
			}
			return sseLine{}, fmt.Errorf("stream ended: %w", r.err)
		case <-deadline.C:
			return sseLine{}, fmt.Errorf("no matching line within %v", timeout)
		}
	}
}

// open reports whether the stream has not ended.
func (r *sseReader) open() bool {
	select {
	case <-r.done:
		return false
	default:
		return true
	}
}

func isLine(s string) func(string) bool { return func(l string) bool { return l == s } }

// ---------------------------------------------------------------------------
// Clients.

// smallBufferClient is a plain HTTP/1.1 client whose connections have a
// receive buffer of rcvbuf bytes (no autotuning), so that a slow reader
// really holds the sender back instead of the kernel buffering megabytes.
func smallBufferClient(rcvbuf int) *http.Client {
	d := &net.Dialer{
		Timeout: 10 * time.Second,
		Control: func(network, address string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf)
			})
			return errors.Join(err, serr)
		},
	}
	tr := &http.Transport{DialContext: d.DialContext, DisableCompression: true, Protocols: new(http.Protocols)}
	tr.Protocols.SetHTTP1(true)
	return &http.Client{Transport: tr}
}

// bigClient is a plain HTTP/1.1 client without a overall timeout, for
// transfers of gigabytes (the tests bound them with contexts).
func bigClient() *http.Client {
	tr := &http.Transport{
		DialContext:        loopbackDial,
		DisableCompression: true,
		Protocols:          new(http.Protocols),
		WriteBufferSize:    256 * sKiB,
		ReadBufferSize:     256 * sKiB,
	}
	tr.Protocols.SetHTTP1(true)
	return &http.Client{Transport: tr}
}

var stoppedLeft = regexp.MustCompile(`big: stopped with (\d+) bytes left`)
