// Package certs makes and loads the certificates of a Drover cluster: a
// small certificate authority (one per cluster) and certificates it issues
// to engines, replicas and operators, all as PEM files on disk. Every
// link that takes TLS (the control API over TCP, the replica transport)
// is mutual TLS under that CA: each side presents a certificate the CA
// signed and checks the other's, so a certificate from the CA is what
// makes a peer a member of the cluster.
//
// Keys are ECDSA P-256 (TLS 1.3 with AES-GCM then uses the CPU's AES
// instructions); key files are written mode 0600, certificates 0644.
package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// File names inside a certificates directory.
const (
	CAFile    = "ca.crt"
	CAKeyFile = "ca.key"
)

// CertFile and KeyFile name the certificate and key issued to name.
func CertFile(name string) string { return name + ".crt" }

// KeyFile names the key of the certificate issued to name.
func KeyFile(name string) string { return name + ".key" }

// ErrExists is returned when Init or Issue would overwrite a file.
var ErrExists = errors.New("already exists")

// DefaultValidity is how long Issue's certificates last unless told.
const DefaultValidity = 825 * 24 * time.Hour

// caValidity is how long a CA made by Init lasts.
const caValidity = 10 * 365 * 24 * time.Hour

// Init makes a new CA in dir (created 0700 if missing) named after
// cluster: ca.crt and ca.key. It refuses to overwrite an existing CA.
func Init(dir, cluster string, now time.Time) error {
	if cluster == "" {
		return errors.New("certs init: empty cluster name")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("certs init: %w", err)
	}
	for _, f := range []string{CAFile, CAKeyFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			return fmt.Errorf("certs init: %s: %w (remove it to make a new CA; every certificate it issued stops working)", filepath.Join(dir, f), ErrExists)
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("certs init: key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "drover CA " + cluster, Organization: []string{cluster}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("certs init: certificate: %w", err)
	}
	if err := writeKey(filepath.Join(dir, CAKeyFile), key); err != nil {
		return fmt.Errorf("certs init: %w", err)
	}
	return writePEM(filepath.Join(dir, CAFile), "CERTIFICATE", der, 0o644)
}

// IssueOptions say what certificate Issue makes.
type IssueOptions struct {
	// Name is the certificate's common name: the identity the other side
	// of a link sees (and logs) for its holder. Files are Name.crt/.key.
	Name string
	// Hosts are the DNS names and IP addresses a server certificate is
	// valid for; a client-only certificate needs none.
	Hosts []string
	// Validity defaults to DefaultValidity.
	Validity time.Duration
	// Replace renews an existing certificate and key of that name (new
	// key, new serial); without it Issue refuses to overwrite them.
	Replace bool
}

// Issue makes a certificate and key signed by the CA in dir, usable both
// as a server and as a client certificate, as dir/Name.crt and
// dir/Name.key. It refuses to overwrite them.
func Issue(dir string, o IssueOptions, now time.Time) error {
	if o.Name == "" || strings.ContainsAny(o.Name, "/\\") || o.Name == "ca" {
		return fmt.Errorf("certs issue: name %q: want a plain name such as engine-1 (not ca, no slashes)", o.Name)
	}
	if o.Validity <= 0 {
		o.Validity = DefaultValidity
	}
	caCert, caKey, err := loadCA(dir)
	if err != nil {
		return fmt.Errorf("certs issue: %w", err)
	}
	certPath, keyPath := filepath.Join(dir, CertFile(o.Name)), filepath.Join(dir, KeyFile(o.Name))
	for _, f := range []string{certPath, keyPath} {
		if _, err := os.Stat(f); err == nil && !o.Replace {
			return fmt.Errorf("certs issue: %s: %w (renew it with --replace)", f, ErrExists)
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("certs issue: key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: o.Name, Organization: caCert.Subject.Organization},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(o.Validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, h := range o.Hosts {
		h = strings.TrimSpace(h)
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("certs issue: certificate: %w", err)
	}
	if !o.Replace {
		if err := writeKey(keyPath, key); err != nil {
			return fmt.Errorf("certs issue: %w", err)
		}
		return writePEM(certPath, "CERTIFICATE", der, 0o644)
	}
	// Renewal: each file is written aside and renamed over the old one,
	// so a process reading them sees an old or a new file, never half of
	// one (and keeps its old pair until both are new: see reloader).
	os.Remove(keyPath + ".new") // left by a renewal that stopped midway
	os.Remove(certPath + ".new")
	if err := writeKey(keyPath+".new", key); err != nil {
		return fmt.Errorf("certs issue: %w", err)
	}
	if err := writePEM(certPath+".new", "CERTIFICATE", der, 0o644); err != nil {
		return fmt.Errorf("certs issue: %w", err)
	}
	if err := os.Rename(keyPath+".new", keyPath); err != nil {
		return fmt.Errorf("certs issue: %w", err)
	}
	if err := os.Rename(certPath+".new", certPath); err != nil {
		return fmt.Errorf("certs issue: %w", err)
	}
	return nil
}

// Revoke adds the serial number of dir/name.crt to dir/revoked: from
// their next handshake on, endpoints whose CA is dir/ca.crt refuse that
// certificate (also a copy of it elsewhere). It returns the serial.
func Revoke(dir, name string, now time.Time) (string, error) {
	path := filepath.Join(dir, CertFile(name))
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("certs revoke: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return "", fmt.Errorf("certs revoke: %s holds no PEM certificate", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return "", fmt.Errorf("certs revoke: parse %s: %w", path, err)
	}
	serial := cert.SerialNumber.Text(16)
	if _, err := readRevoked(filepath.Join(dir, RevokedFile)); err != nil {
		return "", fmt.Errorf("certs revoke: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, RevokedFile), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return "", fmt.Errorf("certs revoke: %w", err)
	}
	if _, err := fmt.Fprintf(f, "%s # %s, revoked %s\n", serial, cert.Subject, now.UTC().Format(time.RFC3339)); err != nil {
		f.Close()
		return "", fmt.Errorf("certs revoke: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return "", fmt.Errorf("certs revoke: %w", err)
	}
	return serial, f.Close()
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err)) // crypto/rand does not fail on Linux
	}
	return n
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("marshal key: %w", err)
	}
	return writePEM(path, "PRIVATE KEY", der, 0o600)
}

// writePEM writes a new file (never over an existing one) with mode perm.
func writePEM(path, kind string, der []byte, perm fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	err = pem.Encode(f, &pem.Block{Type: kind, Bytes: der})
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func loadCA(dir string) (*x509.Certificate, any, error) {
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, CAFile), filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, nil, fmt.Errorf("load CA from %s (make one with drover certs init): %w", dir, err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, nil, fmt.Errorf("parse %s: %w", filepath.Join(dir, CAFile), err)
	}
	if !cert.IsCA {
		return nil, nil, fmt.Errorf("%s is not a CA certificate", filepath.Join(dir, CAFile))
	}
	return cert, pair.PrivateKey, nil
}

// Files name a certificate, its key and the CA that checks peers: the
// three files every mutual-TLS endpoint needs.
type Files struct {
	Cert, Key, CA string
}

// Empty reports whether no file is named (TLS off).
func (f Files) Empty() bool { return f.Cert == "" && f.Key == "" && f.CA == "" }

// check says which file is missing when only some are named.
func (f Files) check() error {
	var missing []string
	for _, x := range []struct{ name, path string }{{"certificate", f.Cert}, {"key", f.Key}, {"CA", f.CA}} {
		if x.path == "" {
			missing = append(missing, x.name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("TLS needs a certificate, its key and the CA; missing: %s", strings.Join(missing, ", "))
	}
	return nil
}

func (f Files) load() (tls.Certificate, *x509.CertPool, error) {
	if err := f.check(); err != nil {
		return tls.Certificate{}, nil, err
	}
	pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("load %s and %s: %w", f.Cert, f.Key, err)
	}
	pem, err := os.ReadFile(f.CA)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("load CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return tls.Certificate{}, nil, fmt.Errorf("load CA: %s holds no PEM certificate", f.CA)
	}
	return pair, pool, nil
}

// RevokedFile, beside the CA file, lists the serial numbers (hex, one per
// line; # starts a comment) of certificates no endpoint accepts any
// more, whatever signed them. Optional.
const RevokedFile = "revoked"

// revokedPath is the revocation list the endpoint of f reads.
func (f Files) revokedPath() string { return filepath.Join(filepath.Dir(f.CA), RevokedFile) }

// material is what an endpoint loaded from its files.
type material struct {
	pair    tls.Certificate
	pool    *x509.CertPool
	revoked map[string]bool // serials, lower-case hex
}

// reloader hands out the newest good material of f: it looks at the
// files' sizes and modification times at every handshake and loads them
// again when they changed, so an issued, renewed or revoked certificate
// and a new CA take effect without a restart. While the files are being
// replaced (a certificate that does not match its key yet), the last
// good material stays in use.
type reloader struct {
	f     Files
	mu    sync.Mutex
	stamp string
	cur   *material
}

func newReloader(f Files) (*reloader, error) {
	r := &reloader{f: f}
	if _, err := r.current(); err != nil {
		return nil, err
	}
	return r, nil
}

func fileStamp(paths ...string) string {
	var b strings.Builder
	for _, p := range paths {
		if st, err := os.Stat(p); err == nil {
			fmt.Fprintf(&b, "%d.%d.%d|", st.Size(), st.ModTime().UnixNano(), st.Mode())
		} else {
			b.WriteString("-|")
		}
	}
	return b.String()
}

func (r *reloader) current() (*material, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	stamp := fileStamp(r.f.Cert, r.f.Key, r.f.CA, r.f.revokedPath())
	if r.cur != nil && stamp == r.stamp {
		return r.cur, nil
	}
	pair, pool, err := r.f.load()
	if err == nil {
		var revoked map[string]bool
		if revoked, err = readRevoked(r.f.revokedPath()); err == nil {
			r.cur, r.stamp = &material{pair: pair, pool: pool, revoked: revoked}, stamp
			return r.cur, nil
		}
	}
	if r.cur != nil {
		return r.cur, nil // keep the last good material until the files agree again
	}
	return nil, err
}

// readRevoked reads a revocation list (missing: none).
func readRevoked(path string) (map[string]bool, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read revocation list: %w", err)
	}
	out := map[string]bool{}
	for i, line := range strings.Split(string(b), "\n") {
		if j := strings.IndexByte(line, '#'); j >= 0 {
			line = line[:j]
		}
		line = strings.ToLower(strings.TrimSpace(line))
		if line == "" {
			continue
		}
		if _, ok := new(big.Int).SetString(line, 16); !ok {
			return nil, fmt.Errorf("revocation list %s line %d: %q is not a hex serial number", path, i+1, line)
		}
		out[strings.TrimLeft(line, "0")] = true
	}
	return out, nil
}

// ErrRevoked is the error a handshake with a revoked peer fails with.
var ErrRevoked = errors.New("certificate revoked")

func (m *material) checkRevoked(chain []*x509.Certificate) error {
	for _, c := range chain {
		if m.revoked[c.SerialNumber.Text(16)] {
			return fmt.Errorf("%w: %s (serial %s)", ErrRevoked, c.Subject, c.SerialNumber.Text(16))
		}
	}
	return nil
}

// ServerConfig is a TLS 1.3 server configuration that requires a client
// certificate signed by the CA and not revoked. It follows its files
// (see reloader): a renewed certificate or a new CA file is used from
// the next handshake on.
func (f Files) ServerConfig() (*tls.Config, error) {
	r, err := newReloader(f)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: tls.RequireAndVerifyClientCert,
	}
	cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		m, err := r.current()
		if err != nil {
			return nil, err
		}
		return &tls.Config{
			MinVersion:   tls.VersionTLS13,
			Certificates: []tls.Certificate{m.pair},
			ClientCAs:    m.pool,
			ClientAuth:   tls.RequireAndVerifyClientCert,
			VerifyConnection: func(cs tls.ConnectionState) error {
				return m.checkRevoked(cs.PeerCertificates)
			},
		}, nil
	}
	return cfg, nil
}

// ClientConfig is a TLS 1.3 client configuration presenting the
// certificate and accepting servers signed by the CA and not revoked.
// The server's name is checked against its certificate as usual (set
// ServerName, or let the dialer take it from the address). The
// certificate and the revocation list follow their files as
// ServerConfig's do; the CA is the one loaded here (the standard check
// takes fixed roots), so a client takes a new CA at its restart.
func (f Files) ClientConfig() (*tls.Config, error) {
	r, err := newReloader(f)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    r.cur.pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			m, err := r.current()
			if err != nil {
				return nil, err
			}
			return &m.pair, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			m, err := r.current()
			if err != nil {
				return err
			}
			return m.checkRevoked(cs.PeerCertificates)
		},
	}, nil
}

// Subject names a verified peer for logs: its certificate's common name
// and organization (the cluster).
func Subject(state tls.ConnectionState) string {
	if len(state.PeerCertificates) == 0 {
		return "no certificate"
	}
	c := state.PeerCertificates[0]
	s := "CN=" + c.Subject.CommonName
	if len(c.Subject.Organization) > 0 {
		s += ",O=" + strings.Join(c.Subject.Organization, "+")
	}
	return s
}
