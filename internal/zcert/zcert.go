// Package zcert reads and writes CURVE key files in the zcert format of CZMQ
// (zcert_save) and pyzmq (zmq.auth.create_certificates): a public file
// NAME.key with `public-key = "..."` under `curve`, and a secret file
// NAME.key_secret with the secret key too. CURVE keys are 32 bytes, written
// as 40 characters of Z85 (ZeroMQ's base-85).
package zcert

import (
	"bufio"
	"bytes"
	"crypto/ecdh"
	"errors"
	"fmt"
	"strings"
	"time"

	zmq "github.com/pebbe/zmq4"
)

// KeyLen is the length of a Z85-encoded CURVE key.
const KeyLen = 40

// CheckKey reports whether s is a Z85-encoded 32-byte key.
func CheckKey(s string) error {
	if len(s) != KeyLen {
		return fmt.Errorf("a CURVE key is %d characters of Z85, got %d", KeyLen, len(s))
	}
	for i := 0; i < len(s); i++ {
		if !strings.ContainsRune(z85Alphabet, rune(s[i])) {
			return fmt.Errorf("%q is not Z85 (character %q)", s, s[i])
		}
	}
	// A group of 5 characters may encode more than 32 bits: only a key
	// that encodes back to itself is one.
	if b := zmq.Z85decode(s); len(b) != 32 || zmq.Z85encode(b) != s {
		return fmt.Errorf("%q is not Z85", s)
	}
	return nil
}

const z85Alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"

// PublicOf derives the public key of a Z85 secret key.
func PublicOf(secret string) (string, error) {
	if err := CheckKey(secret); err != nil {
		return "", fmt.Errorf("secret key: %w", err)
	}
	k, err := ecdh.X25519().NewPrivateKey([]byte(zmq.Z85decode(secret)))
	if err != nil {
		return "", fmt.Errorf("deriving the public key: %w", err)
	}
	return zmq.Z85encode(string(k.PublicKey().Bytes())), nil
}

// Cert is the content of one key file; Secret is empty in a public one.
type Cert struct {
	Public, Secret string
}

// Parse reads the zcert format: `#` comments, sections at the left
// margin (metadata, curve), `name = "value"` properties indented under
// them. Only the curve section matters here; unknown lines are ignored, as
// CZMQ does.
func Parse(data []byte) (Cert, error) {
	var c Cert
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
			c.Public = value
		case "secret-key":
			c.Secret = value
		}
	}
	if c.Public == "" {
		return c, errors.New("no public-key in its curve section (not a zcert key file?)")
	}
	if err := CheckKey(c.Public); err != nil {
		return c, fmt.Errorf("public-key: %w", err)
	}
	if c.Secret != "" {
		pub, err := PublicOf(c.Secret)
		if err != nil {
			return c, err
		}
		if pub != c.Public {
			return c, errors.New("secret-key does not belong to public-key")
		}
	}
	return c, nil
}

// Format writes a key file: the public one when secret is "", else the
// secret one.
func Format(public, secret string) []byte {
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
