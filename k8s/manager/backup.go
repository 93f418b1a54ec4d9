package manager

import (
	"context"
	"errors"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
	"github.com/drover-io/drover/k8s/backuptarget"
	"github.com/drover-io/drover/transports/backuprun"
)

// backupReconciler keeps the manager's finalizer on every Backup and,
// when one is deleted, deletes the backup from its target (its manifest,
// and the chunks no other backup uses) once the agent's finalizer, held
// while the agent uploads, is gone. The agents make backups; the
// manager removes them, so a deletion needs no attached volume.
type backupReconciler struct {
	client.Client
	// secrets reads credential secrets straight from the API server: a
	// cached read would watch every Secret of the cluster.
	secrets client.Reader
}

func (r *backupReconciler) setup(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).Named("backup").For(&v1alpha1.Backup{}).Complete(r)
}

func (r *backupReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var b v1alpha1.Backup
	if err := r.Get(ctx, req.NamespacedName, &b); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if b.DeletionTimestamp.IsZero() {
		if controllerutil.AddFinalizer(&b, v1alpha1.Finalizer) {
			if err := r.Update(ctx, &b); err != nil {
				return ctrl.Result{}, fmt.Errorf("finalizer on backup %s: %w", b.Name, err)
			}
		}
		return ctrl.Result{}, nil
	}
	if !controllerutil.ContainsFinalizer(&b, v1alpha1.Finalizer) {
		return ctrl.Result{}, nil
	}
	if controllerutil.ContainsFinalizer(&b, agentFinalizer) {
		// Its agent is uploading: delete what it writes once it is done.
		return ctrl.Result{RequeueAfter: time.Second}, nil
	}
	if b.Status.URL != "" {
		if err := r.deleteFromTarget(ctx, &b); err != nil {
			return ctrl.Result{}, err
		}
	}
	controllerutil.RemoveFinalizer(&b, v1alpha1.Finalizer)
	if err := r.Update(ctx, &b); err != nil {
		return ctrl.Result{}, fmt.Errorf("release backup %s: %w", b.Name, err)
	}
	return ctrl.Result{}, nil
}

func (r *backupReconciler) deleteFromTarget(ctx context.Context, b *v1alpha1.Backup) error {
	var bt v1alpha1.BackupTarget
	if err := r.Get(ctx, types.NamespacedName{Namespace: b.Namespace, Name: b.Spec.BackupTarget}, &bt); err != nil {
		return fmt.Errorf("backup %s: target %s: %w", b.Name, b.Spec.BackupTarget, err)
	}
	vol, id, err := backuptarget.ParseRef(b.Status.URL)
	if err != nil {
		return err
	}
	repo, err := backuptarget.Open(ctx, r.secrets, bt.Namespace, bt.Spec.URL, bt.Spec.CredentialSecret)
	if err != nil {
		return err
	}
	if _, err := repo.Delete(ctx, vol, id); err != nil && !errors.Is(err, backuprun.ErrNoBackup) {
		return fmt.Errorf("delete backup %s from %s: %w", b.Status.URL, bt.Spec.URL, err)
	}
	return nil
}
