// Package backuptarget opens the object store a BackupTarget names and
// finds backups in it by reference, for the agent (backups, restores)
// and the manager (deleting backups).
package backuptarget

import (
	"context"
	"fmt"
	"strings"

	"github.com/drover-io/drover/core/backup"
	"github.com/drover-io/drover/transports/backuprun"
	"github.com/drover-io/drover/transports/objstore"
)

// Open opens a backup target by URL (a directory or s3://...), with
// credentials from the process's environment (AWS_ACCESS_KEY_ID, ...).
func Open(ctx context.Context, url string) (*backuprun.Repo, error) {
	creds, err := objstore.CredentialsFromEnv("")
	if err != nil {
		return nil, err
	}
	s, err := objstore.Open(ctx, url, creds)
	if err != nil {
		return nil, fmt.Errorf("backup target %s: %w", url, err)
	}
	return backuprun.NewRepo(s), nil
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
