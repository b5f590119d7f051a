package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is one child process in its own process group (a Ctrl-C in the
// terminal reaches only the suite, which stops its children itself), killed
// by the kernel if the suite dies without cleaning up. Its combined output
// goes to a log file; the last 32 KiB are also kept in memory, and onLine,
// if set, sees every complete line as it arrives.
type proc struct {
	name string
	cmd  *exec.Cmd
	file *os.File
	out  *lineWriter
	done chan struct{}
	err  error // Wait's result, set before done is closed
}

// procs is every process the suite started, to check at the end that all of
// them are gone, and to stop them on an interrupt.
var procs struct {
	sync.Mutex
	all []*proc
}

func startProc(name string, cmd *exec.Cmd, logPath string, onLine func([]byte)) (*proc, error) {
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	lw := &lineWriter{file: f, onLine: onLine, max: 32 << 10}
	cmd.Stdout, cmd.Stderr, cmd.Stdin = lw, lw, nil
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, file: f, out: lw, done: make(chan struct{})}
	procs.Lock()
	procs.all = append(procs.all, p)
	procs.Unlock()
	go func() {
		p.err = cmd.Wait() // returns once the output pipes are drained
		lw.flush()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signal sends sig to the process (not to its group: the workers and Caddy
// have no children).
func (p *proc) signal(sig syscall.Signal) error {
	if p.exited() {
		return fmt.Errorf("%s has already exited (%v)", p.name, p.err)
	}
	return p.cmd.Process.Signal(sig)
}

// wait waits up to d for the process to exit.
func (p *proc) wait(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.done:
		return true
	case <-t.C:
		return false
	}
}

// stop sends SIGTERM (and SIGCONT, in case it is frozen), then SIGKILL after
// timeout. It reports whether SIGKILL was needed.
func (p *proc) stop(timeout time.Duration) (killed bool) {
	if p.exited() {
		return false
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	if p.wait(timeout) {
		return false
	}
	_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
	<-p.done
	return true
}

// output is the end of the process's output.
func (p *proc) output() string { return p.out.tail() }

// stopAll kills every process still running (interrupts, failed setups).
func stopAll() {
	procs.Lock()
	all := append([]*proc(nil), procs.all...)
	procs.Unlock()
	for _, p := range all {
		if !p.exited() {
			_ = syscall.Kill(-p.pid(), syscall.SIGCONT)
			_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
			p.wait(10 * time.Second)
		}
	}
}

// leftovers lists the processes that have not been reaped, or whose pid is
// still alive (it should not be: the suite waits for every child).
func leftovers(from int) (n int, left []string) {
	procs.Lock()
	all := append([]*proc(nil), procs.all[from:]...)
	procs.Unlock()
	for _, p := range all {
		if !p.exited() {
			left = append(left, fmt.Sprintf("%s (pid %d) still running", p.name, p.pid()))
			continue
		}
		if syscall.Kill(p.pid(), 0) == nil && cmdlineIs(p.pid(), p.cmd.Path) {
			left = append(left, fmt.Sprintf("%s (pid %d) reaped but alive?", p.name, p.pid()))
		}
	}
	return len(all), left
}

func procCount() int {
	procs.Lock()
	defer procs.Unlock()
	return len(procs.all)
}

func cmdlineIs(pid int, path string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	arg0, _, _ := bytes.Cut(b, []byte{0})
	return filepath.Base(string(arg0)) == filepath.Base(path)
}

// lineWriter appends to a file, keeps the last max bytes, and calls onLine
// for each complete line.
type lineWriter struct {
	mu      sync.Mutex
	file    *os.File
	onLine  func([]byte)
	max     int
	buf     []byte // tail
	partial []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, _ = w.file.Write(p)
	w.buf = append(w.buf, p...)
	if over := len(w.buf) - w.max; over > 0 {
		w.buf = append(w.buf[:0], w.buf[over:]...)
	}
	if w.onLine != nil {
		w.partial = append(w.partial, p...)
		for {
			i := bytes.IndexByte(w.partial, '\n')
			if i < 0 {
				break
			}
			w.onLine(w.partial[:i])
			w.partial = w.partial[i+1:]
		}
		if len(w.partial) == 0 {
			w.partial = nil
		}
	}
	return len(p), nil
}

func (w *lineWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.onLine != nil && len(w.partial) > 0 {
		w.onLine(w.partial)
		w.partial = nil
	}
}

func (w *lineWriter) tail() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return string(w.buf)
}

// freePorts returns n distinct TCP ports that were free on 127.0.0.1 a moment
// ago (all n listeners are held at once so that the ports differ).
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func tcpEndpoint(port int) string { return fmt.Sprintf("tcp://127.0.0.1:%d", port) }

// repoRoot is the directory of this module's go.mod above the working
// directory (`make chaos` runs from it), or the working directory.
func repoRoot() string {
	wd, err := os.Getwd()
	if err != nil {
		return "."
	}
	for d := wd; ; d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil &&
			strings.Contains(string(b), "module github.com/zmqbridge/caddy-zmq") {
			return d
		}
		if filepath.Dir(d) == d {
			return wd
		}
	}
}

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return "    (no output)"
	}
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}
