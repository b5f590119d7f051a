package workerkit

import (
	"testing"
	"time"
)

// TestNextRequest checks how a waiting handler goroutine decides between its
// next request and exiting: an idle timer that fires before handlerIdle has
// passed since the last request must not end it, one that fires after must,
// and so must a stop.
func TestNextRequest(t *testing.T) {
	for _, tc := range []struct {
		name     string
		sinceRun time.Duration // how long ago the goroutine's last request ended
		stop     bool          // the worker is stopping
		send     bool          // a request is waiting for the goroutine
		wantOK   bool
	}{
		{name: "idle long enough", sinceRun: handlerIdle + time.Second, wantOK: false},
		{name: "early timer and a request", sinceRun: 0, send: true, wantOK: true},
		{name: "stopping", sinceRun: 0, stop: true, wantOK: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The select between a fired timer and a waiting request picks
			// either: repeat, so that a goroutine that exits on an early
			// timer is caught.
			for range 20 {
				s := &server{idle: make(chan *flight), stop: make(chan struct{})}
				if tc.stop {
					close(s.stop)
				}
				idle := time.NewTimer(0) // has fired: early unless sinceRun >= handlerIdle
				want := &flight{}
				sent := make(chan struct{})
				if tc.send {
					go func() { s.idle <- want; close(sent) }()
				} else {
					close(sent)
				}
				fl, ok := s.nextRequest(idle, time.Now().Add(-tc.sinceRun))
				idle.Stop()
				if ok != tc.wantOK {
					t.Fatalf("ok = %v, want %v", ok, tc.wantOK)
				}
				if ok && fl != want {
					t.Fatalf("got flight %p, want %p", fl, want)
				}
				<-sent
			}
		})
	}
}
