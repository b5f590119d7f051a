// scraper GETs each URL every interval until killed (or -n rounds); it
// reports how many scrapes it made, their mean duration and size, and the
// CPU time it used itself (which, on one machine, the load under test does
// not get).
//
//	scraper [-every 100ms] [-n 0] URL...
package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	every := flag.Duration("every", 100*time.Millisecond, "interval between rounds (0: back to back)")
	rounds := flag.Int("n", 0, "stop after this many rounds (0: at SIGTERM)")
	flag.Parse()
	urls := flag.Args()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	var tick <-chan time.Time
	if *every > 0 {
		t := time.NewTicker(*every)
		defer t.Stop()
		tick = t.C
	}
	n, bytes, failed := 0, 0, 0
	var total time.Duration
	for r := 0; *rounds == 0 || r < *rounds; r++ {
		if tick != nil {
			select {
			case <-sig:
				report(n, failed, bytes, total)
				return
			case <-tick:
			}
		}
		for _, u := range urls {
			start := time.Now()
			resp, err := http.Get(u)
			if err != nil {
				failed++
				continue
			}
			b, _ := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				failed++
			}
			total += time.Since(start)
			bytes += int(b)
			n++
		}
	}
	report(n, failed, bytes, total)
}

func report(n, failed, bytes int, total time.Duration) {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	fmt.Fprintf(os.Stderr, "scrapes %d, failed %d, mean %v, bytes/scrape %d, scraper CPU %v (%v/scrape)\n",
		n, failed, total/time.Duration(max(n, 1)), bytes/max(n, 1), cpu.Round(time.Millisecond), cpu/time.Duration(max(n, 1)))
}
