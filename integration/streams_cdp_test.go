package integration

// A headless Chromium driven over the Chrome DevTools Protocol, just enough
// to load a page and evaluate JavaScript in it: no dependency beyond
// golang.org/x/net/websocket (already required by Caddy).

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/websocket"
)

const chromiumPath = "/usr/bin/chromium"

// browser is one headless Chromium with a page open.
type browser struct {
	t    *testing.T
	proc *process
	ws   *websocket.Conn
	seq  int
}

// startBrowser starts Chromium on url and connects to the page's DevTools
// endpoint. Without Chromium the test is skipped, even under make test:
// Chromium is an optional dependency (Debian package chromium).
func startBrowser(t *testing.T, url string, extraArgs ...string) *browser {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Skipf("%s is not installed (Debian package chromium): the browser test needs it", chromiumPath)
	}
	profile := t.TempDir()
	cmd := exec.Command(chromiumPath,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--no-default-browser-check", "--mute-audio",
		"--user-data-dir="+profile,
		// Port 0: Chromium picks one and writes it to DevToolsActivePort.
		"--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
		// The DevTools WebSocket refuses clients sending an Origin not
		// listed here (golang.org/x/net/websocket always sends one).
		"--remote-allow-origins=*",
		url)
	cmd.Args = append(cmd.Args[:len(cmd.Args)-1], append(extraArgs, url)...)
	cmd.Dir = profile
	// HOME inside the test: Chromium writes caches and crash dumps there.
	cmd.Env = append(os.Environ(), "HOME="+profile)
	b := &browser{t: t, proc: startProcess(t, "chromium", cmd)}

	var port string
	err := poll(startTimeout, b.exited, func() error {
		data, err := os.ReadFile(filepath.Join(profile, "DevToolsActivePort"))
		if err != nil {
			return err
		}
		lines := strings.Split(string(data), "\n")
		if len(lines) < 2 || lines[0] == "" {
			return fmt.Errorf("DevToolsActivePort incomplete: %q", data)
		}
		port = lines[0]
		return nil
	})
	if err != nil {
		t.Fatalf("chromium: no DevTools port: %v", err)
	}

	// The page target, once it shows our URL.
	var wsURL string
	client := &http.Client{Timeout: 5 * time.Second}
	err = poll(startTimeout, b.exited, func() error {
		resp, err := client.Get("http://127.0.0.1:" + port + "/json/list")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var targets []struct {
			Type, URL, WebSocketDebuggerURL string
		}
		if err := json.NewDecoder(resp.Body).Decode(&targets); err != nil {
			return err
		}
		for _, tg := range targets {
			if tg.Type == "page" && strings.HasPrefix(tg.URL, url) {
				wsURL = tg.WebSocketDebuggerURL
				return nil
			}
		}
		return fmt.Errorf("no page target for %s yet: %+v", url, targets)
	})
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	b.ws, err = websocket.Dial(wsURL, "", "http://127.0.0.1/")
	if err != nil {
		t.Fatalf("chromium: DevTools WebSocket %s: %v", wsURL, err)
	}
	t.Cleanup(func() { b.ws.Close() })
	return b
}

func (b *browser) exited() error {
	if b.proc.Exited() {
		return fmt.Errorf("chromium exited: %v", b.proc.err)
	}
	return nil
}

// call sends one DevTools command and waits for its answer, skipping the
// events that arrive meanwhile.
func (b *browser) call(ctx context.Context, method string, params any, result any) error {
	b.seq++
	id := b.seq
	if err := websocket.JSON.Send(b.ws, map[string]any{"id": id, "method": method, "params": params}); err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(requestTimeout)
	}
	b.ws.SetReadDeadline(deadline)
	defer b.ws.SetReadDeadline(time.Time{})
	for {
		var msg struct {
			ID     int             `json:"id"`
			Result json.RawMessage `json:"result"`
			Error  *struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := websocket.JSON.Receive(b.ws, &msg); err != nil {
			return fmt.Errorf("%s: %w", method, err)
		}
		if msg.ID != id {
			continue // an event, or the answer to an abandoned call
		}
		if msg.Error != nil {
			return fmt.Errorf("%s: error %d: %s", method, msg.Error.Code, msg.Error.Message)
		}
		if result != nil {
			return json.Unmarshal(msg.Result, result)
		}
		return nil
	}
}

// eval evaluates a JavaScript expression in the page and decodes its value
// (returned by value: it must be JSON-serialisable) into out.
func (b *browser) eval(expr string, out any) error {
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	var res struct {
		Result struct {
			Type  string          `json:"type"`
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text      string `json:"text"`
			Exception *struct {
				Description string `json:"description"`
			} `json:"exception"`
		} `json:"exceptionDetails"`
	}
	err := b.call(ctx, "Runtime.evaluate", map[string]any{
		"expression": expr, "returnByValue": true, "awaitPromise": true,
	}, &res)
	if err != nil {
		return err
	}
	if e := res.ExceptionDetails; e != nil {
		msg := e.Text
		if e.Exception != nil {
			msg += " " + e.Exception.Description
		}
		return fmt.Errorf("evaluating %q: %s", expr, msg)
	}
	if out == nil {
		return nil
	}
	if len(res.Result.Value) == 0 {
		return fmt.Errorf("evaluating %q: no value (type %s)", expr, res.Result.Type)
	}
	return json.Unmarshal(res.Result.Value, out)
}
