package caddyzmq

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"text/tabwriter"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

func init() {
	zmqSubcommands = append(zmqSubcommands, newStatusCommand, newDrainCommand, newResumeCommand)
}

// adminFlags are the flags `caddy trust` uses to find the admin endpoint.
func adminFlags(cmd *cobra.Command) {
	cmd.Flags().String("address", "", "Address of the administration API listener (if --config is not used)")
	cmd.Flags().StringP("config", "c", "", "Configuration file (if --address is not used)")
	cmd.Flags().StringP("adapter", "a", "", "Name of config adapter to apply (if --config is used)")
}

// adminRequest calls the admin endpoint the flags name (Caddy's default
// one without flags).
func adminRequest(cmd *cobra.Command, method, uri string) ([]byte, error) {
	address, _ := cmd.Flags().GetString("address")
	configFile, _ := cmd.Flags().GetString("config")
	adapter, _ := cmd.Flags().GetString("adapter")
	addr, err := caddycmd.DetermineAdminAPIAddress(address, nil, configFile, adapter)
	if err != nil {
		return nil, fmt.Errorf("finding the admin endpoint: %w", err)
	}
	resp, err := caddycmd.AdminAPIRequest(addr, method, uri, nil, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

func newStatusCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status [--address <admin>] [--config <path> [--adapter <name>]] [-o table|json]",
		Short: "Lists the zmq pools and their workers",
		Long: `
Lists every pool of the zmq handler with its workers, their state (live,
paused as hung, draining, lost), requests in flight, concurrency, when each
was last heard from and since when it is in its state, as the admin endpoint
(GET /zmq/pools) reports them. Workers without the control channel (plain
Mongrel2 handlers) are counted as connections.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			body, err := adminRequest(cmd, http.MethodGet, "/zmq/pools")
			if err != nil {
				return err
			}
			if out, _ := cmd.Flags().GetString("output"); out == "json" {
				_, err := cmd.OutOrStdout().Write(body)
				return err
			}
			var pools []PoolView
			if err := json.Unmarshal(body, &pools); err != nil {
				return fmt.Errorf("decoding the admin endpoint's answer: %w", err)
			}
			return printStatus(cmd.OutOrStdout(), pools, time.Now())
		},
	}
	adminFlags(cmd)
	cmd.Flags().StringP("output", "o", "table", "Output format: table or json")
	return cmd
}

func newSteerCommand(action, short string) *cobra.Command {
	cmd := &cobra.Command{
		Use:   action + " <pool> <worker> [--address <admin>] [--config <path> [--adapter <name>]]",
		Short: short,
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			uri := "/zmq/pools/" + url.PathEscape(args[0]) + "/workers/" + url.PathEscape(args[1]) + "/" + action
			if force, _ := cmd.Flags().GetBool("force"); force {
				uri += "?force=1"
			}
			body, err := adminRequest(cmd, http.MethodPost, uri)
			if err != nil {
				return err
			}
			var pool PoolView
			if err := json.Unmarshal(body, &pool); err != nil {
				return fmt.Errorf("decoding the admin endpoint's answer: %w", err)
			}
			return printStatus(cmd.OutOrStdout(), []PoolView{pool}, time.Now())
		},
	}
	adminFlags(cmd)
	if action == "drain" {
		cmd.Flags().Bool("force", false, "Drain even the last worker taking requests")
	}
	return cmd
}

func newDrainCommand() *cobra.Command {
	return newSteerCommand("drain", "Drains a worker: it finishes what it holds and takes nothing new")
}

func newResumeCommand() *cobra.Command {
	return newSteerCommand("resume", "Resumes a drained worker")
}

// printStatus writes pools as a table, one line per worker, the way
// `kubectl get` does.
func printStatus(w io.Writer, pools []PoolView, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, "POOL\tWORKER\tADDRESS\tSTATE\tIN-FLIGHT\tMAX\tLAST-HEARD\tAFFINITY\tAGE")
	for _, p := range pools {
		for _, wk := range p.Workers {
			state := wk.State
			if wk.Hung && state != statePaused {
				state += ",hung"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%d\t%s\n", p.Name, wk.ID, orDash(wk.RemoteAddr), state, wk.InFlight,
				orUnknown(wk.MaxConcurrency), ago(now, wk.LastHeard), wk.AffinitySessions, age(now, wk.Since))
		}
		if p.PlainConnections > 0 || len(p.Workers) == 0 {
			fmt.Fprintf(tw, "%s\t(%d plain connections)\t-\t-\t-\t-\t-\t-\t-\n", p.Name, p.PlainConnections)
		}
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func orUnknown(n int) string {
	if n <= 0 {
		return "?"
	}
	return strconv.Itoa(n)
}

func ago(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return age(now, t) + " ago"
}

// age is a duration as kubectl shows it: 45s, 3m12s, 5h, 2d.
func age(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := max(now.Sub(t), 0)
	switch {
	case d < time.Second:
		return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
	case d < time.Minute:
		return strconv.Itoa(int(d.Seconds())) + "s"
	case d < time.Hour:
		return fmt.Sprintf("%dm%ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return strconv.Itoa(int(d.Hours()/24)) + "d"
}
