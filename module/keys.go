package caddyzmq

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	zmq "github.com/pebbe/zmq4"
)

// CURVE keys are 32 bytes, written as 40 characters of Z85 (ZeroMQ's
// base-85). Key files are in the zcert format of CZMQ (zcert_save) and
// pyzmq (zmq.auth.create_certificates): a public file NAME.key with
// `public-key = "..."` under `curve`, and a secret file NAME.key_secret
// with the secret key too. Tools of both families read what this writes,
// and the other way round.

// keyLen is the length of a Z85-encoded CURVE key.
const keyLen = 40

// checkKey reports whether s is a Z85-encoded 32-byte key.
func checkKey(s string) error {
	if len(s) != keyLen {
		return fmt.Errorf("a CURVE key is %d characters of Z85, got %d", keyLen, len(s))
	}
	if len(zmq.Z85decode(s)) != 32 {
		return fmt.Errorf("%q is not Z85", s)
	}
	return nil
}

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

// publicOf derives the public key of a Z85 secret key.
func publicOf(secret string) (string, error) {
	if err := checkKey(secret); err != nil {
		return "", fmt.Errorf("secret key: %w", err)
	}
	pub, err := publicFromSecret([]byte(zmq.Z85decode(secret)))
	if err != nil {
		return "", fmt.Errorf("deriving the public key: %w", err)
	}
	return zmq.Z85encode(string(pub)), nil
}

// zcert is the content of one key file.
type zcert struct {
	public, secret string
}

// parseZcert reads the zcert format: `#` comments, sections at the left
// margin (metadata, curve), `name = "value"` properties indented under
// them. Only the curve section matters here; unknown lines are ignored, as
// CZMQ does.
func parseZcert(data []byte) (zcert, error) {
	var c zcert
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		if line[0] != ' ' && line[0] != '\t' {
			section = trimmed
			continue
		}
		name, value, ok := strings.Cut(trimmed, "=")
		if !ok || section != "curve" {
			continue
		}
		value = strings.TrimSpace(value)
		value = strings.TrimSuffix(strings.TrimPrefix(value, `"`), `"`)
		switch strings.TrimSpace(name) {
		case "public-key":
			c.public = value
		case "secret-key":
			c.secret = value
		}
	}
	if c.public == "" {
		return c, errors.New("no public-key in its curve section (not a zcert key file?)")
	}
	if err := checkKey(c.public); err != nil {
		return c, fmt.Errorf("public-key: %w", err)
	}
	if c.secret != "" {
		pub, err := publicOf(c.secret)
		if err != nil {
			return c, err
		}
		if pub != c.public {
			return c, errors.New("secret-key does not belong to public-key")
		}
	}
	return c, nil
}

// formatZcert writes a key file: the public one when secret is "", else the
// secret one.
func formatZcert(public, secret string) []byte {
	var b bytes.Buffer
	kind := "Public"
	if secret != "" {
		kind = "SECRET"
	}
	fmt.Fprintf(&b, "#   ****  Generated on %s by caddy zmq  ****\n", time.Now().UTC().Format("2006-01-02 15:04:05"))
	fmt.Fprintf(&b, "#   ZeroMQ CURVE %s Certificate\n", kind)
	if secret != "" {
		b.WriteString("#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n")
	} else {
		b.WriteString("#   Exchange securely, or use a secure mechanism to verify the contents\n" +
			"#   of this file after exchange.\n")
	}
	b.WriteString("\nmetadata\ncurve\n")
	fmt.Fprintf(&b, "    public-key = %q\n", public)
	if secret != "" {
		fmt.Fprintf(&b, "    secret-key = %q\n", secret)
	}
	return b.Bytes()
}

// writeKeyFiles writes base.key (public, mode 0644) and base.key_secret
// (mode 0600), refusing to overwrite either.
func writeKeyFiles(base string, kp keyPair) error {
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{base + ".key_secret", formatZcert(kp.public, kp.secret), 0o600},
		{base + ".key", formatZcert(kp.public, ""), 0o644},
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
		return nil, fmt.Errorf("allowed keys directory: %w", err)
	}
	sort.Strings(paths)
	keys := make(map[string]string, len(paths))
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		c, err := parseZcert(data)
		if err != nil {
			return nil, fmt.Errorf("key file %s: %w", p, err)
		}
		keys[c.public] = filepath.Base(p)
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
	if err := st.Store(ctx, frontEndKeyPath, formatZcert(kp.public, kp.secret)); err != nil {
		return keyPair{}, false, fmt.Errorf("storing the front end key: %w", err)
	}
	return kp, true, nil
}

func loadFrontEndKey(ctx context.Context, st keyStorage) (keyPair, error) {
	data, err := st.Load(ctx, frontEndKeyPath)
	if err != nil {
		return keyPair{}, err
	}
	c, err := parseZcert(data)
	if err != nil {
		return keyPair{}, fmt.Errorf("front end key in storage (%s): %w", frontEndKeyPath, err)
	}
	if c.secret == "" {
		return keyPair{}, fmt.Errorf("front end key in storage (%s) has no secret-key", frontEndKeyPath)
	}
	return keyPair{public: c.public, secret: c.secret}, nil
}
