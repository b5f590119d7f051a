package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"time"
)

const (
	m2ServerUUID = "f400bf85-4538-4f7a-8908-67e313d515c2"
	m2SendIdent  = "34f9ceee-cd52-4b7f-b197-88bf2f0ec378"
)

// startMongrel2 loads a config with m2sh into a fresh directory (also the
// chroot) and runs mongrel2 in the foreground. It returns the URL and the
// front end ("send_spec,recv_spec") for the handler.
//
// TLS (Mongrel2 1.12, mbedTLS): the `certdir` setting plus use_ssl=1 on the
// Server; the certificate and key are <certdir>/<server uuid>.crt and .key.
// Mongrel2 also looks up <certdir>/<SNI host>.crt for each handshake, so the
// same pair is written as localhost.crt/.key too (otherwise every connection
// logs "Failed to find cert for localhost" before falling back).
func startMongrel2(ctx context.Context, s *Stack, env *Env, tls bool) (url, frontEnd string, err error) {
	p, err := freePorts(3)
	if err != nil {
		return "", "", err
	}
	port, send, recv := p[0], tcpEndpoint(p[1]), tcpEndpoint(p[2])
	dir, err := s.Dir("mongrel2")
	if err != nil {
		return "", "", err
	}
	for _, d := range []string{"run", "logs", "tmp", "certs"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return "", "", err
		}
	}
	useSSL, settings := 0, ""
	if tls {
		useSSL, settings = 1, `, "certdir": "./certs/"`
		if env.M2Ciphers != "" {
			settings += fmt.Sprintf(`, "ssl_ciphers": %q`, env.M2Ciphers)
		}
		for _, name := range []string{m2ServerUUID, "localhost"} {
			base := filepath.Join(dir, "certs", name)
			if err := writeSelfSigned(base+".crt", base+".key"); err != nil {
				return "", "", err
			}
		}
	}
	conf := fmt.Sprintf(`hello = Handler(send_spec='%s', send_ident='%s',
                recv_spec='%s', recv_ident='')
main = Server(uuid="%s", access_log="/logs/access.log",
    error_log="/logs/error.log", chroot="./", pid_file="/run/mongrel2.pid",
    default_host="localhost", name="main", bind_addr="127.0.0.1", port=%d, use_ssl=%d,
    hosts=[Host(name="localhost", routes={'/': hello})])
settings = {"server.daemonize": 0, "disable.access_logging": 1%s}
servers = [main]
`, send, m2SendIdent, recv, m2ServerUUID, port, useSSL, settings)
	if err := os.WriteFile(filepath.Join(dir, "mongrel2.conf"), []byte(conf), 0o644); err != nil {
		return "", "", err
	}

	logname := "root"
	if u, err := user.Current(); err == nil {
		logname = u.Username
	}
	environ := append(os.Environ(), "LOGNAME="+logname) // m2sh needs it
	load := exec.CommandContext(ctx, env.M2sh, "load", "-config", "mongrel2.conf", "-db", "config.sqlite")
	load.Dir, load.Env = dir, environ
	if out, err := load.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("m2sh load: %v\n%s", err, out)
	}
	cmd := exec.Command(env.Mongrel2, "config.sqlite", m2ServerUUID)
	cmd.Dir, cmd.Env = dir, environ
	proc, err := s.Start("mongrel2", cmd)
	if err != nil {
		return "", "", err
	}
	proc.LogFile = filepath.Join(dir, "logs", "error.log")

	scheme, host := "http", "127.0.0.1"
	if tls {
		scheme, host = "https", "localhost"
	}
	return fmt.Sprintf("%s://%s:%d/", scheme, host, port), send + "," + recv, nil
}

// writeSelfSigned writes a fresh ECDSA P-256 certificate for localhost and
// 127.0.0.1 (PEM) and its key (SEC1 "EC PRIVATE KEY", which mbedTLS reads).
// P-256 is also what Caddy's internal issuer uses, so the handshakes compare.
func writeSelfSigned(certFile, keyFile string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "localhost"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(7 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	return os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
}
