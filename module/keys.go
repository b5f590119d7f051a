package caddyzmq

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	zmq "github.com/pebbe/zmq4"

	"github.com/zmqbridge/caddy-zmq/internal/zcert"
)

// CURVE keys are 32 bytes, written as 40 characters of Z85 (ZeroMQ's
// base-85). Key files are in the zcert format of CZMQ (zcert_save) and
// pyzmq (zmq.auth.create_certificates): a public file NAME.key with
// `public-key = "..."` under `curve`, and a secret file NAME.key_secret
// with the secret key too. Tools of both families read what this writes,
// and the other way round.

// keyPair is a CURVE keypair, both halves Z85.
type keyPair struct {
	public, secret string
}

// newKeyPair makes a fresh keypair with libsodium's generator.
func newKeyPair() (keyPair, error) {
	pub, sec, err := zmq.NewCurveKeypair()
	if err != nil {
		return keyPair{}, fmt.Errorf("generating a CURVE keypair: %w", err)
	}
	return keyPair{public: pub, secret: sec}, nil
}

// writeKeyFiles writes base.key (public, mode 0644) and base.key_secret
// (mode 0600), refusing to overwrite either.
func writeKeyFiles(base string, kp keyPair) error {
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{base + ".key_secret", zcert.Format(kp.public, kp.secret), 0o600},
		{base + ".key", zcert.Format(kp.public, ""), 0o644},
	} {
		fh, err := os.OpenFile(f.path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, f.mode)
		if err != nil {
			return err
		}
		_, err = fh.Write(f.data)
		if cerr := fh.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// loadKeyDir reads the public keys of every *.key file in dir, as pyzmq's
// load_certificates does, keyed by key with the file name as value.
func loadKeyDir(dir string) (map[string]string, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.key"))
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(dir); err != nil {
		return nil, err
	}
	sort.Strings(paths)
	keys := make(map[string]string, len(paths))
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		c, err := zcert.Parse(data)
		if err != nil {
			return nil, fmt.Errorf("key file %s: %w", p, err)
		}
		keys[c.Public] = filepath.Base(p)
	}
	return keys, nil
}

// keyStorage is the part of Caddy's storage (certmagic.Storage) that keeps
// the front end's keypair.
type keyStorage interface {
	Lock(ctx context.Context, name string) error
	Unlock(ctx context.Context, name string) error
	Load(ctx context.Context, key string) ([]byte, error)
	Store(ctx context.Context, key string, value []byte) error
}

// frontEndKeyPath is where the front end's keypair lives in Caddy's
// storage (a zcert secret file): front ends that share a storage share the
// key, so workers trust all of them with one server key.
const frontEndKeyPath = "zmq/curve/frontend.key_secret"

// loadOrCreateFrontEndKey returns the keypair kept in storage, generating
// and storing it under a lock the first time, so that two front ends
// starting together on one storage end up with the same key.
func loadOrCreateFrontEndKey(ctx context.Context, st keyStorage) (keyPair, bool, error) {
	if kp, err := loadFrontEndKey(ctx, st); err == nil || !errors.Is(err, fs.ErrNotExist) {
		return kp, false, err
	}
	const lock = "zmq_curve_frontend_key"
	if err := st.Lock(ctx, lock); err != nil {
		return keyPair{}, false, fmt.Errorf("locking storage to generate the front end key: %w", err)
	}
	defer func() { _ = st.Unlock(ctx, lock) }()
	// Another front end may have made it while we waited for the lock.
	if kp, err := loadFrontEndKey(ctx, st); err == nil || !errors.Is(err, fs.ErrNotExist) {
		return kp, false, err
	}
	kp, err := newKeyPair()
	if err != nil {
		return kp, false, err
	}
	if err := st.Store(ctx, frontEndKeyPath, zcert.Format(kp.public, kp.secret)); err != nil {
		return keyPair{}, false, fmt.Errorf("storing the front end key: %w", err)
	}
	return kp, true, nil
}

func loadFrontEndKey(ctx context.Context, st keyStorage) (keyPair, error) {
	data, err := st.Load(ctx, frontEndKeyPath)
	if err != nil {
		return keyPair{}, err
	}
	c, err := zcert.Parse(data)
	if err != nil {
		return keyPair{}, fmt.Errorf("front end key in storage (%s): %w", frontEndKeyPath, err)
	}
	if c.Secret == "" {
		return keyPair{}, fmt.Errorf("front end key in storage (%s) has no secret-key", frontEndKeyPath)
	}
	return keyPair{public: c.Public, secret: c.Secret}, nil
}
