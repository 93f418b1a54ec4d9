package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/drover-io/drover/frontends/device"
)

func init() { subcommands = append(subcommands, newKeyCmd) }

const keyLong = `Make the key of an encrypted volume. drover dev --encryption-key-file FILE
encrypts every 4 KiB block with AES-256-XTS (the block's index as the tweak,
as dm-crypt's aes-xts-plain64) in the engine's process, before replication:
replicas, rebuilds, snapshots and backups only ever hold ciphertext, and the
key never leaves the process (drover volume read/write, backups and restores
see the ciphertext). The key file holds 64 bytes as hex; keep it mode 0600 and
away from the replicas and backups. A volume made with a key refuses to serve
without it, or with another one.`

func newKeyCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "key", Short: "Make encryption keys for volumes", Long: keyLong, Args: cobra.NoArgs,
		Example: "  drover key new vol.key\n  drover dev --encryption-key-file vol.key"}
	cmd.AddCommand(&cobra.Command{Use: "new FILE", Short: "Write a new random volume key to FILE (mode 0600)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			key := make([]byte, device.CryptKeyBytes)
			if _, err := rand.Read(key); err != nil {
				return fmt.Errorf("random key: %w", err)
			}
			f, err := os.OpenFile(args[0], os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return fmt.Errorf("key file: %w", err)
			}
			_, err = f.WriteString(hex.EncodeToString(key) + "\n")
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("key file: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "new volume key in %s (losing it loses the volume's data)\n", args[0])
			return nil
		}})
	return cmd
}

// loadKey reads a volume key file: 64 bytes as hex (drover key new), or
// the 64 raw bytes.
func loadKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("encryption key: %w", err)
	}
	if len(b) == device.CryptKeyBytes {
		return b, nil
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(key) != device.CryptKeyBytes {
		return nil, fmt.Errorf("encryption key %s: want %d bytes as hex (drover key new makes one)", path, device.CryptKeyBytes)
	}
	return key, nil
}

// devEncryptionFile records, in drover dev's data dir, that the volume is
// encrypted and a check of its key (never the key).
const devEncryptionFile = "encryption"

const encryptionScheme = "aes-256-xts-plain64-4k"

// devCheckEncryption settles the key against what the data dir records:
// a new volume records the key's check; an existing one needs the same
// key if it was made with one, and refuses a key if it was made without.
func devCheckEncryption(dataDir, keyFile string, isNew bool) ([]byte, error) {
	path := filepath.Join(dataDir, devEncryptionFile)
	held, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	recorded := err == nil
	if keyFile == "" {
		if recorded {
			return nil, fmt.Errorf("data dir %s holds an encrypted volume: give its key with --encryption-key-file", dataDir)
		}
		return nil, nil
	}
	key, err := loadKey(keyFile)
	if err != nil {
		return nil, err
	}
	switch {
	case recorded:
		scheme, check, _ := strings.Cut(strings.TrimSpace(string(held)), "\n")
		want, err := hex.DecodeString(strings.TrimSpace(check))
		if scheme != encryptionScheme || err != nil {
			return nil, fmt.Errorf("data dir %s: %s is damaged or of an unknown scheme %q", dataDir, devEncryptionFile, scheme)
		}
		if err := device.CheckKey(key, want); err != nil {
			return nil, fmt.Errorf("--encryption-key-file %s: %w: it is not the key volume in %s was made with", keyFile, err, dataDir)
		}
	case !isNew:
		return nil, fmt.Errorf("data dir %s holds a volume made without encryption: --encryption-key-file applies to new volumes only", dataDir)
	default:
		rec := encryptionScheme + "\n" + hex.EncodeToString(device.KeyCheck(key)) + "\n"
		if err := os.WriteFile(path, []byte(rec), 0o600); err != nil {
			return nil, fmt.Errorf("data dir: record encryption: %w", err)
		}
	}
	return bytes.Clone(key), nil
}
