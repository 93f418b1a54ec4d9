// Package keyfile stores a volume's data key wrapped by a key derived
// from a passphrase, so that the passphrase can change (Rewrap) without
// touching the data the key encrypts. The file is JSON: scrypt's
// parameters and salt, and the data key sealed with AES-256-GCM under the
// derived key. The passphrase and the keys are never written anywhere
// else.
package keyfile

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/scrypt"
)

// ErrWrongPassphrase is returned by Unwrap when the passphrase does not
// open the file.
var ErrWrongPassphrase = errors.New("wrong passphrase for the key file")

// Format names the file's format in its "format" field.
const Format = "drover-wrapped-key-v1"

// Default scrypt cost: about 0.1 s and 32 MiB per wrap or unwrap.
const (
	defaultN = 1 << 15
	defaultR = 8
	defaultP = 1
)

// Bounds on the scrypt cost a file may ask for: a hostile file must not
// make opening it take unbounded memory or time. scrypt takes 128·N·r
// bytes and time in proportion to N·r·p.
const (
	maxN          = 1 << 20
	maxR          = 32
	maxP          = 16
	maxScryptByte = 256 << 20
)

type file struct {
	Format  string `json:"format"`
	KDF     string `json:"kdf"`
	N       int    `json:"scrypt_n"`
	R       int    `json:"scrypt_r"`
	P       int    `json:"scrypt_p"`
	Salt    []byte `json:"salt"`
	Nonce   []byte `json:"nonce"`
	Wrapped []byte `json:"wrapped_key"`
}

// IsWrapped reports whether b looks like a wrapped key file (as opposed
// to a raw key).
func IsWrapped(b []byte) bool {
	var f struct {
		Format string `json:"format"`
	}
	return json.Unmarshal(b, &f) == nil && f.Format == Format
}

// Wrap seals key under passphrase and returns the file's content.
func Wrap(key, passphrase []byte) ([]byte, error) {
	return wrap(key, passphrase, defaultN, defaultR, defaultP)
}

// wrap is Wrap with the scrypt cost given.
func wrap(key, passphrase []byte, n, r, p int) ([]byte, error) {
	if len(passphrase) == 0 {
		return nil, errors.New("wrap key: empty passphrase")
	}
	f := file{Format: Format, KDF: "scrypt", N: n, R: r, P: p,
		Salt: make([]byte, 16), Nonce: make([]byte, 12)}
	if _, err := rand.Read(f.Salt); err != nil {
		return nil, fmt.Errorf("wrap key: %w", err)
	}
	if _, err := rand.Read(f.Nonce); err != nil {
		return nil, fmt.Errorf("wrap key: %w", err)
	}
	aead, err := f.aead(passphrase)
	if err != nil {
		return nil, err
	}
	f.Wrapped = aead.Seal(nil, f.Nonce, key, []byte(Format))
	out, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("wrap key: %w", err)
	}
	return append(out, '\n'), nil
}

// Unwrap opens a file made by Wrap with passphrase and returns the key.
func Unwrap(b, passphrase []byte) ([]byte, error) {
	key, _, err := unwrap(b, passphrase)
	return key, err
}

func unwrap(b, passphrase []byte) ([]byte, *file, error) {
	var f file
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, nil, fmt.Errorf("key file: %w", err)
	}
	switch {
	case f.Format != Format:
		return nil, nil, fmt.Errorf("key file: format %q, want %q", f.Format, Format)
	case f.KDF != "scrypt":
		return nil, nil, fmt.Errorf("key file: unknown kdf %q", f.KDF)
	case f.N < 2 || f.N > maxN || f.N&(f.N-1) != 0 || f.R < 1 || f.R > maxR || f.P < 1 || f.P > maxP ||
		128*f.N*f.R > maxScryptByte:
		return nil, nil, fmt.Errorf("key file: scrypt parameters N=%d r=%d p=%d out of bounds (N a power of two up to %d, r up to %d, p up to %d, 128·N·r bytes up to %d MiB)",
			f.N, f.R, f.P, maxN, maxR, maxP, maxScryptByte>>20)
	case len(f.Salt) < 16 || len(f.Nonce) != 12:
		return nil, nil, errors.New("key file: salt or nonce of the wrong size")
	}
	aead, err := f.aead(passphrase)
	if err != nil {
		return nil, nil, err
	}
	key, err := aead.Open(nil, f.Nonce, f.Wrapped, []byte(Format))
	if err != nil {
		return nil, nil, ErrWrongPassphrase
	}
	return key, &f, nil
}

// Rewrap opens b with oldPassphrase and seals the same key under
// newPassphrase (new salt and nonce, the same scrypt cost).
func Rewrap(b, oldPassphrase, newPassphrase []byte) ([]byte, error) {
	key, f, err := unwrap(b, oldPassphrase)
	if err != nil {
		return nil, err
	}
	defer clear(key)
	return wrap(key, newPassphrase, f.N, f.R, f.P)
}

func (f *file) aead(passphrase []byte) (cipher.AEAD, error) {
	kek, err := scrypt.Key(passphrase, f.Salt, f.N, f.R, f.P, 32)
	if err != nil {
		return nil, fmt.Errorf("key file: derive key: %w", err)
	}
	defer clear(kek)
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	return cipher.NewGCM(block)
}

// ErrNeedPassphrase: the key is wrapped and no passphrase was given.
var ErrNeedPassphrase = errors.New("the key is wrapped by a passphrase")

// Parse returns the n-byte key b holds: n bytes as hex (what drover key
// new writes), the n raw bytes, or a wrapped key passphrase opens.
func Parse(b, passphrase []byte, n int) ([]byte, error) {
	if IsWrapped(b) {
		if len(passphrase) == 0 {
			return nil, ErrNeedPassphrase
		}
		key, err := Unwrap(b, passphrase)
		if err != nil {
			return nil, err
		}
		if len(key) != n {
			return nil, fmt.Errorf("wrapped key of %d bytes, want %d", len(key), n)
		}
		return key, nil
	}
	if len(b) == n {
		return append([]byte(nil), b...), nil
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(key) != n {
		return nil, fmt.Errorf("want %d bytes as hex (drover key new makes one)", n)
	}
	return key, nil
}
