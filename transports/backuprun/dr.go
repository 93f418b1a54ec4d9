package backuprun

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/drover-io/drover/transports/objstore"
)

// DR is a disaster-recovery standby volume: a volume (reached by its
// control address) that follows another volume's backups in this target,
// applying each new one incrementally, until it is activated. Its record
// lives in the target under dr/<name>.
type DR struct {
	Name      string `json:"name"`
	Volume    string `json:"volume"`  // the volume whose backups it follows
	Standby   string `json:"standby"` // control address of the standby volume
	Applied   string `json:"applied"` // id of the backup it holds ("" = none yet)
	Activated bool   `json:"activated"`
}

// ErrActivated: a DR volume stops following once activated.
var ErrActivated = errors.New("DR volume is activated")

func drKey(name string) string { return "dr/" + name }

// DRCreate records a new DR volume (it must not exist yet).
func (r *Repo) DRCreate(ctx context.Context, d DR) error {
	if err := checkName("DR name", d.Name); err != nil {
		return err
	}
	if _, err := r.Store.Get(ctx, drKey(d.Name)); err == nil {
		return fmt.Errorf("DR volume %s already exists in %s", d.Name, r.Store)
	}
	d.Applied, d.Activated = "", false
	return r.putDR(ctx, d)
}

// DRGet reads a DR record.
func (r *Repo) DRGet(ctx context.Context, name string) (DR, error) {
	var d DR
	b, err := r.Store.Get(ctx, drKey(name))
	if errors.Is(err, objstore.ErrNotExist) {
		return d, fmt.Errorf("no DR volume %s in %s", name, r.Store)
	}
	if err != nil {
		return d, err
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return d, fmt.Errorf("DR record %s: %w", name, err)
	}
	return d, nil
}

func (r *Repo) putDR(ctx context.Context, d DR) error {
	b, _ := json.MarshalIndent(d, "", "  ")
	return r.Store.Put(ctx, drKey(d.Name), b)
}

// DRSync applies the newest backup of the followed volume to the standby
// if it holds an older one: only the chunks that differ are written (all
// of them when the backup it holds was deleted meanwhile). It returns the
// backup id the standby holds afterwards.
func (r *Repo) DRSync(ctx context.Context, name string, standby Target, opt RestoreOptions) (string, error) {
	d, err := r.DRGet(ctx, name)
	if err != nil {
		return "", err
	}
	if d.Activated {
		return d.Applied, fmt.Errorf("%w: %s", ErrActivated, name)
	}
	latest, err := r.Latest(ctx, d.Volume)
	if err != nil {
		return d.Applied, err
	}
	if latest == nil || latest.ID == d.Applied {
		return d.Applied, nil
	}
	opt.From, opt.All = nil, false
	if d.Applied != "" {
		from, err := r.Manifest(ctx, d.Volume, d.Applied)
		switch {
		case errors.Is(err, ErrNoBackup):
			opt.All = true
		case err != nil:
			return d.Applied, err
		case from.ChunkBytes != latest.ChunkBytes:
			opt.All = true
		default:
			opt.From = from
		}
	}
	if err := r.Restore(ctx, latest, standby, opt); err != nil {
		return d.Applied, fmt.Errorf("apply backup %s to DR volume %s: %w", latest.ID, name, err)
	}
	d.Applied = latest.ID
	return d.Applied, r.putDR(ctx, d)
}

// DRActivate applies the newest backup and marks the DR volume activated:
// from then on it is an ordinary volume and follows nothing.
func (r *Repo) DRActivate(ctx context.Context, name string, standby Target, opt RestoreOptions) (string, error) {
	id, err := r.DRSync(ctx, name, standby, opt)
	if err != nil {
		return id, err
	}
	d, err := r.DRGet(ctx, name)
	if err != nil {
		return id, err
	}
	d.Activated = true
	return id, r.putDR(ctx, d)
}
