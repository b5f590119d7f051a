package caddyzmq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

func init() {
	zmqSubcommands = append(zmqSubcommands, keygenCommand, frontEndKeyCommand)
}

// keygenCommand is `caddy zmq keygen --out DIR/NAME`: a worker keypair in
// the zcert format that CZMQ and pyzmq read.
func keygenCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keygen --out <dir>/<name>",
		Short: "Makes a CURVE keypair for a worker (zcert files NAME.key and NAME.key_secret)",
		Long: `
Writes NAME.key (the public key, to copy into the front end's allow_dir or
its curve 'allow' list) and NAME.key_secret (mode 0600, for the worker's
-curve-key flag) in the zcert format that CZMQ and pyzmq read and write, and
prints the public key. Existing files are never overwritten.`,
		RunE: caddycmd.WrapCommandFuncForCobra(runKeygen),
	}
	cmd.Flags().String("out", "", "path and base name of the key files, e.g. keys/worker1")
	return cmd
}

func runKeygen(fl caddycmd.Flags) (int, error) {
	out := fl.String("out")
	if out == "" {
		return caddy.ExitCodeFailedStartup, errors.New("--out <dir>/<name> is required")
	}
	if dir := filepath.Dir(out); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
	}
	kp, err := newKeyPair()
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	if err := writeKeyFiles(out, kp); err != nil {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("writing key files: %w", err)
	}
	fmt.Fprintf(os.Stderr, "wrote %s.key (public) and %s.key_secret (secret, keep it on the worker)\n", out, out)
	fmt.Println(kp.public)
	return caddy.ExitCodeSuccess, nil
}

// frontEndKeyCommand is `caddy zmq frontend-key`: the public key workers
// need (their -curve-server-key).
func frontEndKeyCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "frontend-key [--config <file> [--adapter <name>]] [--key-file <file>] [--create]",
		Short: "Prints the front end's CURVE public key (what workers give as -curve-server-key)",
		Long: `
Prints the public key of the front end's CURVE keypair: the one kept in
Caddy's storage (the storage module of --config, or the default file
storage), or the one in --key-file (a zcert file, as for curve
secret_key_file). With --create, a keypair is generated in storage if there
is none yet, as the first 'caddy run' with curve on would do.`,
		RunE: caddycmd.WrapCommandFuncForCobra(runFrontEndKey),
	}
	cmd.Flags().StringP("config", "c", "", "Caddy config whose storage holds the key")
	cmd.Flags().StringP("adapter", "a", "", "adapter of --config")
	cmd.Flags().String("key-file", "", "zcert key file of the front end instead of the storage")
	cmd.Flags().Bool("create", false, "generate the keypair in storage if there is none")
	return cmd
}

func runFrontEndKey(fl caddycmd.Flags) (int, error) {
	if f := fl.String("key-file"); f != "" {
		kp, err := (&Curve{SecretKeyFile: f}).frontEndKey(caddy.Context{}, nil)
		if err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
		fmt.Println(kp.public)
		return caddy.ExitCodeSuccess, nil
	}
	st, cleanup, err := storageOf(fl.String("config"), fl.String("adapter"))
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	defer cleanup()
	ctx := context.Background()
	var kp keyPair
	if fl.Bool("create") {
		kp, _, err = loadOrCreateFrontEndKey(ctx, st)
	} else {
		kp, err = loadFrontEndKey(ctx, st)
		if errors.Is(err, fs.ErrNotExist) {
			err = fmt.Errorf("no front end key in storage yet (%s): it is made by the first start with curve on, or by --create", frontEndKeyPath)
		}
	}
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	fmt.Println(kp.public)
	return caddy.ExitCodeSuccess, nil
}

// storageOf opens the storage of a config file, or Caddy's default one.
func storageOf(configFile, adapter string) (keyStorage, func(), error) {
	noop := func() {}
	if configFile == "" {
		return caddy.DefaultStorage, noop, nil
	}
	cfgJSON, _, _, err := caddycmd.LoadConfig(configFile, adapter)
	if err != nil {
		return nil, noop, err
	}
	var cfg caddy.Config
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		return nil, noop, fmt.Errorf("decoding config: %w", err)
	}
	if cfg.StorageRaw == nil {
		return caddy.DefaultStorage, noop, nil
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	val, err := ctx.LoadModule(&cfg, "StorageRaw")
	if err != nil {
		cancel()
		return nil, noop, fmt.Errorf("loading storage module: %w", err)
	}
	conv, ok := val.(caddy.StorageConverter)
	if !ok {
		cancel()
		return nil, noop, fmt.Errorf("storage module %T is not a storage", val)
	}
	st, err := conv.CertMagicStorage()
	if err != nil {
		cancel()
		return nil, noop, err
	}
	return st, cancel, nil
}
