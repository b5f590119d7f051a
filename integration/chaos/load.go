package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// result is one request of the load.
type result struct {
	id     uint64
	post   bool
	start  time.Time
	dur    time.Duration
	status int    // 0: no HTTP response (see errKind)
	errK   string // socket error kind: timeout, reset, eof, refused, other
	worker string // X-Worker of the answer
	// badBody: a 200 whose body is not "ok <id>\n": a reply meant for
	// another request, the worst thing a bridge can do.
	badBody bool
}

func (r *result) ok() bool { return r.status == http.StatusOK && !r.badBody }

// loadOpts: GetConc clients loop on GET /get?id=N and PostConc clients on
// POST /post?id=N, with ids unique within the scenario, until Duration has
// passed; then the requests in flight complete (each bounded by Timeout).
type loadOpts struct {
	URL      string
	GetConc  int
	PostConc int
	Duration time.Duration
	Timeout  time.Duration
}

// runLoad runs the load and returns every request's result. t0 is when the
// first requests were sent.
func runLoad(ctx context.Context, o loadOpts) (res []result, t0 time.Time) {
	conc := o.GetConc + o.PostConc
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConns:        conc,
		MaxIdleConnsPerHost: conc,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: o.Timeout}

	var next atomic.Uint64
	per := make([][]result, conc)
	var wg sync.WaitGroup
	t0 = time.Now()
	stopAt := t0.Add(o.Duration)
	for i := range conc {
		post := i >= o.GetConc
		wg.Add(1)
		go func() {
			defer wg.Done()
			out := make([]result, 0, 4096)
			for ctx.Err() == nil && time.Now().Before(stopAt) {
				out = append(out, do(client, o.URL, next.Add(1), post))
			}
			per[i] = out
		}()
	}
	wg.Wait()
	n := 0
	for _, p := range per {
		n += len(p)
	}
	res = make([]result, 0, n)
	for _, p := range per {
		res = append(res, p...)
	}
	return res, t0
}

func do(client *http.Client, base string, id uint64, post bool) result {
	ids := strconv.FormatUint(id, 10)
	r := result{id: id, post: post, start: time.Now()}
	var req *http.Request
	if post {
		req, _ = http.NewRequest(http.MethodPost, base+"/post?id="+ids, strings.NewReader("payload "+ids))
		req.Header.Set("Content-Type", "text/plain")
	} else {
		req, _ = http.NewRequest(http.MethodGet, base+"/get?id="+ids, nil)
	}
	resp, err := client.Do(req)
	if err == nil {
		var body []byte
		body, err = io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		r.status = resp.StatusCode
		r.worker = resp.Header.Get("X-Worker")
		if err == nil && r.status == http.StatusOK && string(body) != "ok "+ids+"\n" {
			r.badBody = true
		}
		if err != nil {
			r.status = 0 // the body broke off: a socket error after all
		}
	}
	r.dur = time.Since(r.start)
	if err != nil {
		r.errK = errKind(err)
	}
	return r
}

func errKind(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	}
	return "other"
}
