package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
	"github.com/drover-io/drover/k8s/backuptarget"
	"github.com/drover-io/drover/transports/backuprun"
	"github.com/drover-io/drover/transports/control"
)

// restoreStep runs the restore of ref into the engine's volume in the
// background: it reports done once it has succeeded, and the last
// failure (retried at the next call) otherwise.
func (a *Agent) restoreStep(inst *engineInstance, name, namespace, ref, target, secret string) (bool, error) {
	inst.mu.Lock()
	defer inst.mu.Unlock()
	switch {
	case inst.restored == ref:
		return true, nil
	case inst.restoring:
		return false, nil
	}
	err := inst.restoreErr
	inst.restoring, inst.restoreErr = true, nil
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 24*time.Hour)
		defer cancel()
		rerr := func() error {
			repo, err := backuptarget.Open(ctx, a.secrets, namespace, target, secret)
			if err != nil {
				return err
			}
			m, err := backuptarget.Manifest(ctx, repo, ref)
			if err != nil {
				return err
			}
			return repo.Restore(ctx, m, control.BackupVolume{C: inst.ctl}, backuprun.RestoreOptions{})
		}()
		inst.mu.Lock()
		inst.restoring = false
		if rerr == nil {
			inst.restored = ref
			a.log.Info("backup restored", "engine", name, "backup", ref)
		} else {
			inst.restoreErr = fmt.Errorf("restore %s: %w", ref, rerr)
			a.log.Warn("restore", "engine", name, "backup", ref, "err", rerr)
		}
		inst.mu.Unlock()
	}()
	return false, err
}

// backupReconciler runs the Backups of the volumes whose engines run on
// this node.
type backupReconciler struct{ a *Agent }

func (br *backupReconciler) setup(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).Named("backup").For(&v1alpha1.Backup{}).
		Watches(&v1alpha1.Engine{}, ofEngineVolume(br.a.client, &v1alpha1.BackupList{})).Complete(br)
}

func (br *backupReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	a := br.a
	var b v1alpha1.Backup
	if err := a.client.Get(ctx, req.NamespacedName, &b); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !b.DeletionTimestamp.IsZero() || b.Status.State == v1alpha1.BackupCompleted || b.Status.State == v1alpha1.BackupError {
		return ctrl.Result{}, br.release(ctx, &b)
	}
	inst := a.engineInstance(b.Spec.Volume)
	if inst == nil || !inst.driver.Serving() {
		return ctrl.Result{}, nil // not ours, or not yet
	}
	// The agent's finalizer marks the upload in flight: the manager
	// deletes a deleted Backup from the target only once it is gone. The
	// update fails if the object changed (a deletion began) since it was
	// read, and then nothing starts.
	if controllerutil.AddFinalizer(&b, Finalizer) {
		if err := a.client.Update(ctx, &b); err != nil {
			return ctrl.Result{}, fmt.Errorf("finalizer on backup %s: %w", b.Name, err)
		}
	}
	var target v1alpha1.BackupTarget
	if err := a.client.Get(ctx, types.NamespacedName{Namespace: b.Namespace, Name: b.Spec.BackupTarget}, &target); err != nil {
		return ctrl.Result{}, br.fail(ctx, &b, fmt.Errorf("backup target %s: %w", b.Spec.BackupTarget, err))
	}
	if err := br.setStatus(ctx, &b, func(st *v1alpha1.BackupStatus) { st.State = v1alpha1.BackupInProgress }); err != nil {
		return ctrl.Result{}, err
	}
	repo, err := backuptarget.Open(ctx, a.secrets, target.Namespace, target.Spec.URL, target.Spec.CredentialSecret)
	if err != nil {
		return ctrl.Result{}, err // the target may come back: retried with backoff
	}
	src := control.BackupVolume{C: inst.ctl}
	m, _, err := repo.Create(ctx, src, backuprun.CreateOptions{Labels: b.Spec.Labels})
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return ctrl.Result{}, err
		}
		return ctrl.Result{}, br.fail(ctx, &b, err)
	}
	if _, err := backuprun.DropOldSnapshots(ctx, src, m); err != nil {
		a.log.Warn("drop older backup snapshots", "volume", b.Spec.Volume, "err", err)
	}
	a.log.Info("backup completed", "volume", b.Spec.Volume, "backup", m.Volume+"/"+m.ID)
	if err := br.setStatus(ctx, &b, func(st *v1alpha1.BackupStatus) {
		st.State, st.URL, st.Progress, st.SnapshotName = v1alpha1.BackupCompleted, m.Volume+"/"+m.ID, 100, m.Snapshot
		st.VolumeName, st.VolumeSize, st.Error = b.Spec.Volume, int64(m.SizeBytes), ""
	}); err != nil {
		if apierrors.IsNotFound(err) {
			// The Backup went away while it uploaded: nobody can name
			// this backup any more, so it must not stay in the target.
			if _, derr := repo.Delete(ctx, m.Volume, m.ID); derr != nil {
				a.log.Warn("delete the backup of a deleted Backup", "backup", m.Volume+"/"+m.ID, "err", derr)
			}
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	return ctrl.Result{}, br.release(ctx, &b)
}

// release drops the agent's finalizer once the upload is over.
func (br *backupReconciler) release(ctx context.Context, b *v1alpha1.Backup) error {
	if !controllerutil.ContainsFinalizer(b, Finalizer) {
		return nil
	}
	patch := client.MergeFrom(b.DeepCopy())
	controllerutil.RemoveFinalizer(b, Finalizer)
	if err := br.a.client.Patch(ctx, b, patch); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("release backup %s: %w", b.Name, err)
	}
	return nil
}

func (br *backupReconciler) fail(ctx context.Context, b *v1alpha1.Backup, err error) error {
	if serr := br.setStatus(ctx, b, func(st *v1alpha1.BackupStatus) { st.State, st.Error = v1alpha1.BackupError, err.Error() }); serr != nil {
		return serr
	}
	return br.release(ctx, b)
}

func (br *backupReconciler) setStatus(ctx context.Context, b *v1alpha1.Backup, fn func(*v1alpha1.BackupStatus)) error {
	patch := client.MergeFrom(b.DeepCopy())
	fn(&b.Status)
	if err := br.a.client.Status().Patch(ctx, b, patch); err != nil {
		return fmt.Errorf("status of backup %s: %w", b.Name, err)
	}
	return nil
}
