// scraper GETs each URL every interval until killed; it reports how many
// scrapes it made and their mean duration.
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	urls := os.Args[1:]
	tick := time.NewTicker(100 * time.Millisecond)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	n, bytes := 0, 0
	var total time.Duration
	for {
		select {
		case <-sig:
			fmt.Fprintf(os.Stderr, "scrapes %d, mean %v, bytes/scrape %d\n", n, total/time.Duration(max(n, 1)), bytes/max(n, 1))
			return
		case <-tick.C:
			for _, u := range urls {
				start := time.Now()
				resp, err := http.Get(u)
				if err != nil {
					continue
				}
				b, _ := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				total += time.Since(start)
				bytes += int(b)
				n++
			}
		}
	}
}
