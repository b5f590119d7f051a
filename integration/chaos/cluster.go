package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	startTimeout = 30 * time.Second // a process becoming ready
	stopTimeout  = 15 * time.Second // SIGTERM to exit, before SIGKILL
)

// cluster is one Caddy (chaos.Caddyfile) and its workers, for one scenario.
type cluster struct {
	o        *options
	key      string // scenario key, part of the worker ids
	dir      string // logs of this scenario
	caddy    *proc
	events   *eventLog
	url      string // http://127.0.0.1:PORT
	frontEnd string // -frontend value for the workers
	slots    []*incarnation
	incs     []*incarnation // every worker process of the scenario
	firstPID int            // index in procs.all of the scenario's first process
}

// incarnation is one worker process; a restarted slot gets a new one, with
// a new id and a new exec log.
type incarnation struct {
	id      string
	slot, n int
	proc    *proc
	execLog string
	// fault is what was done to it ("" for none): "killed", "frozen",
	// "hung", "restarted".
	fault string
	// stopKilled: it needed SIGKILL to stop at the end (or after a drain).
	stopKilled bool
}

func newCluster(ctx context.Context, o *options, key string) (*cluster, error) {
	dir := filepath.Join(o.Logs, key)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	c := &cluster{o: o, key: key, dir: dir, firstPID: procCount()}
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		if err = c.startCaddy(ctx, attempt); err == nil || !errors.Is(err, errPortTaken) {
			break
		}
	}
	if err != nil {
		return c, err
	}
	for i := range o.Workers {
		inc, err := c.startWorker(i)
		if err != nil {
			return c, err
		}
		c.slots = append(c.slots, inc)
	}
	for _, inc := range c.slots {
		if err := c.waitJoined(ctx, inc, 0); err != nil {
			return c, err
		}
	}
	// Every worker answers: a few rounds of requests until each one was
	// seen (PUSH round-robins, so this takes a handful).
	seen := map[string]bool{}
	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(startTimeout)
	for i := 0; len(seen) < len(c.slots); i++ {
		if time.Now().After(deadline) {
			return c, fmt.Errorf("only %d of %d workers answered within %v", len(seen), len(c.slots), startTimeout)
		}
		if ctx.Err() != nil {
			return c, ctx.Err()
		}
		// ids above 1e15 do not collide with the load's.
		w, err := probe(client, c.url+"/get?id="+strconv.Itoa(1e15+i))
		if err == nil {
			seen[w] = true
		} else {
			time.Sleep(20 * time.Millisecond)
		}
	}
	return c, nil
}

var errPortTaken = errors.New("a port was taken")

func (c *cluster) startCaddy(ctx context.Context, attempt int) error {
	ports, err := freePorts(5)
	if err != nil {
		return err
	}
	home := filepath.Join(c.dir, "caddy-home")
	vars := map[string]string{
		"XDG_DATA_HOME":    filepath.Join(home, "data"),
		"XDG_CONFIG_HOME":  filepath.Join(home, "config"),
		"ADMIN_ADDR":       fmt.Sprintf("127.0.0.1:%d", ports[0]),
		"HTTP_PORT":        strconv.Itoa(ports[1]),
		"BIND_HOST":        "127.0.0.1",
		"ZMQ_REQUESTS":     tcpEndpoint(ports[2]),
		"ZMQ_REPLIES":      tcpEndpoint(ports[3]),
		"ZMQ_CONTROL":      tcpEndpoint(ports[4]),
		"REPLY_TIMEOUT":    c.o.ReplyTimeout.String(),
		"RETRIES":          strconv.Itoa(c.o.Retries),
		"ZMQ_LOG_LEVEL":    "DEBUG", // dispatch re-sends are debug lines
		"DISPATCH_TIMEOUT": "1s",    // the module's default
		"HEARTBEAT":        c.o.Heartbeat,
	}
	env := os.Environ()
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	cmd := exec.Command(c.o.Caddy, "run", "--config", c.o.Config, "--adapter", "caddyfile")
	cmd.Dir = c.dir
	cmd.Env = env
	c.events = newEventLog()
	p, err := startProc("caddy", cmd, filepath.Join(c.dir, fmt.Sprintf("caddy.%d.log", attempt)), c.events.line)
	if err != nil {
		return err
	}
	c.caddy = p
	c.url = "http://127.0.0.1:" + vars["HTTP_PORT"]
	c.frontEnd = vars["ZMQ_REQUESTS"] + "," + vars["ZMQ_REPLIES"] + "," + vars["ZMQ_CONTROL"]

	client := &http.Client{Timeout: 2 * time.Second}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(startTimeout)
	for {
		if p.exited() {
			if strings.Contains(strings.ToLower(p.output()), "address already in use") {
				return errPortTaken
			}
			return fmt.Errorf("caddy exited (%v):\n%s", p.err, indent(p.output()))
		}
		// Any HTTP answer will do (503: no worker yet).
		resp, err := client.Get(c.url + "/")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			p.stop(stopTimeout)
			return fmt.Errorf("caddy not answering on %s after %v: %v\n%s", c.url, startTimeout, err, indent(p.output()))
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// startWorker starts a new incarnation in slot (replacing nothing: the
// caller has stopped the previous one).
func (c *cluster) startWorker(slot int) (*incarnation, error) {
	n := 0
	for _, inc := range c.incs {
		if inc.slot == slot {
			n++
		}
	}
	inc := &incarnation{
		id:      fmt.Sprintf("%s-w%d.%d", c.key, slot, n),
		slot:    slot,
		n:       n,
		execLog: filepath.Join(c.dir, fmt.Sprintf("w%d.%d.exec", slot, n)),
	}
	cmd := exec.Command(c.o.Worker, "-frontend", c.frontEnd, "-id", inc.id, "-exec-log", inc.execLog,
		"-work", c.o.Work.String(), "-shutdown-timeout", "5s")
	cmd.Dir = c.dir
	p, err := startProc(inc.id, cmd, filepath.Join(c.dir, fmt.Sprintf("w%d.%d.log", slot, n)), nil)
	if err != nil {
		return nil, err
	}
	inc.proc = p
	c.incs = append(c.incs, inc)
	if slot < len(c.slots) {
		c.slots[slot] = inc
	}
	return inc, nil
}

// waitJoined waits for Caddy's "worker joined the control channel" for inc,
// looking at Caddy's events from index from on.
func (c *cluster) waitJoined(ctx context.Context, inc *incarnation, from int) error {
	_, ok := c.events.waitFor(from, startTimeout, ctx.Done(), func(e *event) bool {
		return e.Msg == msgJoined && e.Worker == inc.id
	})
	if !ok {
		if inc.proc.exited() {
			return fmt.Errorf("worker %s exited (%v):\n%s", inc.id, inc.proc.err, indent(inc.proc.output()))
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("worker %s did not join Caddy's control channel within %v", inc.id, startTimeout)
	}
	return nil
}

// caddyAnswers checks, after the run, that Caddy still serves requests: one
// of a few tries must get a 200 from a worker.
func (c *cluster) caddyAnswers() error {
	client := &http.Client{Timeout: c.o.ReplyTimeout + 5*time.Second}
	defer client.CloseIdleConnections()
	var last error
	for i := range 5 {
		if c.caddy.exited() {
			return fmt.Errorf("caddy exited (%v)", c.caddy.err)
		}
		_, err := probe(client, c.url+"/get?id="+strconv.Itoa(2e15+i))
		if err == nil {
			return nil
		}
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("caddy does not answer after the run: %v", last)
}

// probe makes one GET and returns the answering worker (X-Worker).
func probe(client *http.Client, url string) (string, error) {
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(b)))
	}
	return resp.Header.Get("X-Worker"), nil
}

// shutdown stops the workers (SIGTERM, drain) and then Caddy, and reports
// Caddy's state and what did not stop.
func (c *cluster) shutdown() (caddyErr string, left []string) {
	for _, inc := range c.slots {
		if inc == nil || inc.proc == nil {
			continue
		}
		_ = inc.proc.signal(syscall.SIGCONT) // a frozen one must be able to exit
	}
	for _, inc := range c.incs {
		if inc.proc != nil && inc.proc.stop(stopTimeout) {
			inc.stopKilled = true
		}
	}
	if c.caddy != nil {
		if c.caddy.exited() {
			caddyErr = fmt.Sprintf("caddy exited during the run (%v)", c.caddy.err)
		} else if c.caddy.stop(stopTimeout) {
			caddyErr = "caddy needed SIGKILL to stop"
		}
	}
	_, left = leftovers(c.firstPID)
	return caddyErr, left
}
