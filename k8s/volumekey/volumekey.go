// Package volumekey reads an encrypted volume's key from the Kubernetes
// Secret its Volume names, for the manager (which records the key's
// check value when the volume is first served) and the agent (which
// starts the engine only with a key that matches it).
package volumekey

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/drover-io/drover/transports/device"
	"github.com/drover-io/drover/transports/keyfile"
)

// Fields of a volume key Secret.
const (
	KeyField        = "key"        // 64 bytes as hex, raw, or a wrapped key file
	PassphraseField = "passphrase" // opens a wrapped key
)

// Read returns the key of Secret name in namespace. Read it uncached (an
// API reader): a cached read would watch every Secret of the cluster.
func Read(ctx context.Context, c client.Reader, namespace, name string) ([]byte, error) {
	var sec corev1.Secret
	if err := c.Get(ctx, types.NamespacedName{Namespace: namespace, Name: name}, &sec); err != nil {
		return nil, fmt.Errorf("encryption key secret %s/%s: %w", namespace, name, err)
	}
	b, ok := sec.Data[KeyField]
	if !ok {
		return nil, fmt.Errorf("encryption key secret %s/%s has no %q", namespace, name, KeyField)
	}
	key, err := keyfile.Parse(b, sec.Data[PassphraseField], device.CryptKeyBytes)
	if errors.Is(err, keyfile.ErrNeedPassphrase) {
		return nil, fmt.Errorf("encryption key secret %s/%s: %w: put it in %q", namespace, name, err, PassphraseField)
	}
	if err != nil {
		return nil, fmt.Errorf("encryption key secret %s/%s: %w", namespace, name, err)
	}
	return key, nil
}

// Check is the hex check value of key (device.KeyCheck): what a Volume
// records, never the key.
func Check(key []byte) string { return hex.EncodeToString(device.KeyCheck(key)) }

// Verify returns device.ErrWrongKey (wrapped) unless key matches check.
func Verify(key []byte, check string) error {
	want, err := hex.DecodeString(check)
	if err != nil || len(want) == 0 {
		return fmt.Errorf("bad encryption key check %q", check)
	}
	return device.CheckKey(key, want)
}
