package zmqio

import (
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"
)

// An owner that waits only on the Notifier (and receives until EAGAIN
// after every wake, its own sends included) answers every one of many
// ping-pong round trips: no signal is lost between two waits, nor taken by
// the owner's own sends. A lost one stalls the exchange until the deadline.
func TestNotifierPingPong(t *testing.T) {
	tests := []struct {
		name      string
		transport string
		clients   int
		rounds    int
	}{
		{"inproc, one client", "inproc", 1, 3000},
		{"tcp, four clients", "tcp", 4, 500},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, err := zmq.NewContext()
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = ctx.Term() }()
			router, err := ctx.NewSocket(zmq.ROUTER)
			if err != nil {
				t.Fatal(err)
			}
			defer router.Close()
			_ = router.SetLinger(0)
			addr := fmt.Sprintf("inproc://zmqio-notify-%d", pairSeq.Add(1))
			if tt.transport == "tcp" {
				addr = "tcp://127.0.0.1:*"
			}
			if err := router.Bind(addr); err != nil {
				t.Fatal(err)
			}
			if tt.transport == "tcp" {
				if addr, err = router.GetLastEndpoint(); err != nil {
					t.Fatal(err)
				}
			}
			n, err := NewNotifier(router)
			if err != nil {
				t.Fatal(err)
			}
			defer n.Close()
			in, err := NewReceiver(router)
			if err != nil {
				t.Fatal(err)
			}
			defer in.Close()

			// The clients: each sends a round and waits for its echo, at
			// most clientPatience: a lost signal shows as a client error.
			errs := make(chan error, tt.clients)
			var clients sync.WaitGroup
			for c := range tt.clients {
				clients.Go(func() { errs <- pingClient(ctx, addr, c, tt.rounds) })
			}
			defer clients.Wait() // before ctx.Term, which waits for their sockets

			// The owner: select on the notifier, echo everything.
			id := make([]byte, 256)
			body := make([]byte, 256)
			done, echoed := 0, 0
			for done < tt.clients {
				select {
				case err := <-errs:
					if err != nil {
						t.Fatalf("after %d echoes: %v (a lost signal stalls the owner)", echoed, err)
					}
					done++
					continue
				case <-n.C():
				}
				for {
					who, _, err := in.Recv(id, zmq.DONTWAIT)
					if err != nil {
						break
					}
					who = append([]byte(nil), who...)
					msg, _, err := in.Recv(body, 0)
					if err != nil {
						t.Fatal(err)
					}
					if _, err := router.SendBytes(who, zmq.SNDMORE); err != nil {
						t.Fatal(err)
					}
					if _, err := router.SendBytes(msg, 0); err != nil {
						t.Fatal(err)
					}
					echoed++
				}
			}
			if want := tt.clients * tt.rounds; echoed != want {
				t.Errorf("echoed %d messages, want %d", echoed, want)
			}
			closed := make(chan struct{})
			go func() { _ = n.Close(); close(closed) }()
			select {
			case <-closed:
			case <-time.After(5 * time.Second):
				t.Fatal("Close did not stop the watcher")
			}
		})
	}
}

// clientPatience is how long a client waits for an echo: far longer than a
// round trip on a loaded machine, short enough to fail a stalled test.
const clientPatience = 10 * time.Second

func pingClient(ctx *zmq.Context, addr string, c, rounds int) error {
	s, err := ctx.NewSocket(zmq.DEALER)
	if err != nil {
		return err
	}
	defer s.Close()
	_ = s.SetLinger(0)
	_ = s.SetRcvtimeo(clientPatience)
	if err := s.Connect(addr); err != nil {
		return err
	}
	for i := range rounds {
		want := strconv.Itoa(c) + "/" + strconv.Itoa(i)
		if _, err := s.Send(want, 0); err != nil {
			return err
		}
		got, err := s.Recv(0)
		if err != nil {
			return fmt.Errorf("client %d round %d: no echo: %w", c, i, err)
		}
		if got != want {
			return fmt.Errorf("client %d: echo %q, want %q", c, got, want)
		}
	}
	return nil
}
