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

	"github.com/drover-io/drover/transports/device"
	"github.com/drover-io/drover/transports/keyfile"
)

func init() { subcommands = append(subcommands, newKeyCmd) }

const keyLong = `Make the key of an encrypted volume. drover dev --encryption-key-file FILE
encrypts every 4 KiB block with AES-256-XTS (the block's index as the tweak,
as dm-crypt's aes-xts-plain64) in the engine's process, before replication:
replicas, rebuilds, snapshots and backups only ever hold ciphertext, and the
key never leaves the process (drover volume read/write, backups and restores
see the ciphertext). The key file holds 64 bytes as hex, or, with
--passphrase-file, the key wrapped by a key derived from the passphrase
(scrypt, AES-256-GCM): then the key file alone reveals nothing, and
"drover key rewrap" changes the passphrase without touching the volume. Keep
key files mode 0600 and away from the replicas and backups. A volume made
with a key refuses to serve without it, or with another one.`

func newKeyCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "key", Short: "Make encryption keys for volumes", Long: keyLong, Args: cobra.NoArgs,
		Example: `  drover key new vol.key
  drover dev --encryption-key-file vol.key
  drover key new vol.key --passphrase-file pass
  drover dev --encryption-key-file vol.key --encryption-passphrase-file pass
  drover key rewrap vol.key --passphrase-file pass --new-passphrase-file pass2
  drover key check vol.key     # then: drover engine ... --encryption-key-file vol.key --encryption-key-check HEX`}
	var passFile, newPassFile string
	newCmd := &cobra.Command{Use: "new FILE", Short: "Write a new random volume key to FILE (mode 0600)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			key := make([]byte, device.CryptKeyBytes)
			if _, err := rand.Read(key); err != nil {
				return fmt.Errorf("random key: %w", err)
			}
			defer clear(key)
			content := []byte(hex.EncodeToString(key) + "\n")
			if passFile != "" {
				pass, err := readPassphrase(passFile)
				if err != nil {
					return err
				}
				if content, err = keyfile.Wrap(key, pass); err != nil {
					return err
				}
			}
			if err := writeNewFile(args[0], content); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "new volume key in %s (losing it loses the volume's data)\n", args[0])
			return nil
		}}
	newCmd.Flags().StringVar(&passFile, "passphrase-file", "", "wrap the key with a key derived from the passphrase in this file")
	rewrap := &cobra.Command{Use: "rewrap FILE", Short: "Change the passphrase of a wrapped key file (the volume key stays)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := os.ReadFile(args[0])
			if err != nil {
				return fmt.Errorf("key file: %w", err)
			}
			old, err := readPassphrase(passFile)
			if err != nil {
				return err
			}
			fresh, err := readPassphrase(newPassFile)
			if err != nil {
				return err
			}
			out, err := keyfile.Rewrap(b, old, fresh)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			tmp := args[0] + ".rewrap"
			if err := writeNewFile(tmp, out); err != nil {
				return err
			}
			if err := os.Rename(tmp, args[0]); err != nil {
				os.Remove(tmp)
				return fmt.Errorf("key file: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s now opens with the new passphrase (the volume key is unchanged)\n", args[0])
			return nil
		}}
	rewrap.Flags().StringVar(&passFile, "passphrase-file", "", "the current passphrase")
	rewrap.Flags().StringVar(&newPassFile, "new-passphrase-file", "", "the new passphrase")
	_ = rewrap.MarkFlagRequired("passphrase-file")
	_ = rewrap.MarkFlagRequired("new-passphrase-file")
	check := &cobra.Command{Use: "check FILE", Short: "Print the key's check value (drover engine --encryption-key-check takes it)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := loadKey(args[0], passFile)
			if err != nil {
				return err
			}
			defer clear(key)
			fmt.Fprintln(cmd.OutOrStdout(), hex.EncodeToString(device.KeyCheck(key)))
			return nil
		}}
	check.Flags().StringVar(&passFile, "passphrase-file", "", "passphrase that opens a wrapped key file")
	cmd.AddCommand(newCmd, rewrap, check)
	return cmd
}

// engineKey loads the engine's key and checks it against the check value
// recorded when the volume was made (drover key check): the engine has
// no directory of its own to keep it in.
func engineKey(keyFile, passFile, check string) ([]byte, error) {
	if keyFile == "" {
		if check != "" || passFile != "" {
			return nil, errors.New("--encryption-key-check and --encryption-passphrase-file need --encryption-key-file")
		}
		return nil, nil
	}
	if check == "" {
		return nil, fmt.Errorf("--encryption-key-file needs --encryption-key-check (drover key check %s prints it; record it with the volume): without it a wrong key would serve garbage", keyFile)
	}
	want, err := hex.DecodeString(strings.TrimSpace(check))
	if err != nil {
		return nil, fmt.Errorf("--encryption-key-check: %w", err)
	}
	key, err := loadKey(keyFile, passFile)
	if err != nil {
		return nil, err
	}
	if err := device.CheckKey(key, want); err != nil {
		clear(key)
		return nil, fmt.Errorf("--encryption-key-file %s: %w: it does not match --encryption-key-check", keyFile, err)
	}
	return key, nil
}

// writeNewFile writes b to a new file of mode 0600 (never over one).
func writeNewFile(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("key file: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("key file: %w", err)
	}
	return nil
}

// readPassphrase reads a passphrase file (a trailing newline is not
// part of the passphrase).
func readPassphrase(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("passphrase: %w", err)
	}
	b = bytes.TrimRight(b, "\r\n")
	if len(b) == 0 {
		return nil, fmt.Errorf("passphrase file %s is empty", path)
	}
	return b, nil
}

// loadKey reads a volume key file: 64 bytes as hex (drover key new), the
// 64 raw bytes, or a wrapped key that passFile's passphrase opens.
func loadKey(path, passFile string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("encryption key: %w", err)
	}
	var pass []byte
	if passFile != "" && keyfile.IsWrapped(b) {
		if pass, err = readPassphrase(passFile); err != nil {
			return nil, err
		}
	}
	key, err := keyfile.Parse(b, pass, device.CryptKeyBytes)
	if errors.Is(err, keyfile.ErrNeedPassphrase) {
		return nil, fmt.Errorf("encryption key %s is wrapped by a passphrase: give --encryption-passphrase-file", path)
	}
	if err != nil {
		return nil, fmt.Errorf("encryption key %s: %w", path, err)
	}
	return key, nil
}

// recordedKeyCheck reads the key check the data dir records, if any.
func recordedKeyCheck(dataDir string) (check []byte, recorded bool, err error) {
	held, err := os.ReadFile(filepath.Join(dataDir, devEncryptionFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("data dir: %w", err)
	}
	scheme, line, _ := strings.Cut(strings.TrimSpace(string(held)), "\n")
	check, err = hex.DecodeString(strings.TrimSpace(line))
	if scheme != encryptionScheme || err != nil {
		return nil, false, fmt.Errorf("data dir %s: %s is damaged or of an unknown scheme %q", dataDir, devEncryptionFile, scheme)
	}
	return check, true, nil
}

// devEncryptionFile records, in drover dev's data dir, that the volume is
// encrypted and a check of its key (never the key).
const devEncryptionFile = "encryption"

const encryptionScheme = "aes-256-xts-plain64-4k"

// devCheckEncryption settles the key against what the data dir records:
// a new volume records the key's check; an existing one needs the same
// key if it was made with one, and refuses a key if it was made without.
func devCheckEncryption(dataDir, keyFile, passFile string, isNew bool) ([]byte, error) {
	if st, err := loadRekeyState(dataDir); err != nil || st != nil {
		if err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("data dir %s: a rekey of the volume is under way (block %d of %d): resume it with drover dev --rekey-to NEW-KEY-FILE (it serves meanwhile) or drover volume rekey --data-dir %s, with the same keys",
			dataDir, st.NextBlock, st.TotalBlocks, dataDir)
	}
	want, recorded, err := recordedKeyCheck(dataDir)
	if err != nil {
		return nil, err
	}
	if keyFile == "" {
		if recorded {
			return nil, fmt.Errorf("data dir %s holds an encrypted volume: give its key with --encryption-key-file", dataDir)
		}
		return nil, nil
	}
	key, err := loadKey(keyFile, passFile)
	if err != nil {
		return nil, err
	}
	switch {
	case recorded:
		if err := device.CheckKey(key, want); err != nil {
			return nil, fmt.Errorf("--encryption-key-file %s: %w: it is not the key volume in %s was made with", keyFile, err, dataDir)
		}
	case !isNew:
		return nil, fmt.Errorf("data dir %s holds a volume made without encryption: --encryption-key-file applies to new volumes only", dataDir)
	default:
		rec := encryptionScheme + "\n" + hex.EncodeToString(device.KeyCheck(key)) + "\n"
		if err := os.WriteFile(filepath.Join(dataDir, devEncryptionFile), []byte(rec), 0o600); err != nil {
			return nil, fmt.Errorf("data dir: record encryption: %w", err)
		}
	}
	return bytes.Clone(key), nil
}
