// Package backuptarget opens the object store a BackupTarget names and
// finds backups in it by reference, for the agent (backups, restores)
// and the manager (deleting backups).
package backuptarget

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/drover-io/drover/core/backup"
	"github.com/drover-io/drover/transports/backuprun"
	"github.com/drover-io/drover/transports/objstore"
)

// Open opens a backup target by URL (a directory or s3://...) with the
// credentials of the Secret secretName in namespace (AWS_ACCESS_KEY_ID
// and AWS_SECRET_ACCESS_KEY, as BackupTargetSpec.CredentialSecret names
// it), or, with no secret named, those of the process's environment.
func Open(ctx context.Context, c client.Reader, namespace, url, secretName string) (*backuprun.Repo, error) {
	creds, err := Credentials(ctx, c, namespace, secretName)
	if err != nil {
		return nil, fmt.Errorf("backup target %s: %w", url, err)
	}
	s, err := objstore.Open(ctx, url, creds)
	if err != nil {
		return nil, fmt.Errorf("backup target %s: %w", url, err)
	}
	return backuprun.NewRepo(s), nil
}

// Secret keys a credential secret holds.
const (
	AccessKeyField = "AWS_ACCESS_KEY_ID"
	SecretKeyField = "AWS_SECRET_ACCESS_KEY"
)

// Credentials reads the S3 credentials of Secret secretName in namespace
// ("": the process's environment). A secret that lacks a key is an error
// naming it, not an anonymous request the store refuses later.
func Credentials(ctx context.Context, c client.Reader, namespace, secretName string) (objstore.Credentials, error) {
	if secretName == "" {
		return objstore.CredentialsFromEnv("")
	}
	var sec corev1.Secret
	if err := c.Get(ctx, types.NamespacedName{Namespace: namespace, Name: secretName}, &sec); err != nil {
		return objstore.Credentials{}, fmt.Errorf("credential secret %s/%s: %w", namespace, secretName, err)
	}
	creds := objstore.Credentials{AccessKey: string(sec.Data[AccessKeyField]), SecretKey: string(sec.Data[SecretKeyField])}
	for field, v := range map[string]string{AccessKeyField: creds.AccessKey, SecretKeyField: creds.SecretKey} {
		if v == "" {
			return objstore.Credentials{}, fmt.Errorf("credential secret %s/%s has no %s", namespace, secretName, field)
		}
	}
	return creds, nil
}

// ParseRef splits VOLUME/ID (ID may be "latest").
func ParseRef(ref string) (volume, id string, err error) {
	volume, id, ok := strings.Cut(ref, "/")
	if !ok || volume == "" || id == "" {
		return "", "", fmt.Errorf("backup %q: want VOLUME/ID or VOLUME/latest", ref)
	}
	return volume, id, nil
}

// Manifest finds backup ref (VOLUME/ID or VOLUME/latest) in repo.
func Manifest(ctx context.Context, repo *backuprun.Repo, ref string) (*backup.Manifest, error) {
	vol, id, err := ParseRef(ref)
	if err != nil {
		return nil, err
	}
	if id != "latest" {
		return repo.Manifest(ctx, vol, id)
	}
	m, err := repo.Latest(ctx, vol)
	if err == nil && m == nil {
		err = fmt.Errorf("%w: volume %s has none", backuprun.ErrNoBackup, vol)
	}
	return m, err
}
