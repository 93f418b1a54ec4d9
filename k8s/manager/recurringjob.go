package manager

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/robfig/cron/v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
)

// GroupLabelPrefix marks a volume's recurring-job groups: a volume is in
// group G when it carries the label GroupLabelPrefix+G.
const GroupLabelPrefix = "recurring-job-group.storage.drover.io/"

// recurringJobReconciler runs RecurringJobs: at each time the cron
// schedule names, it creates a Snapshot of every attached volume in the
// job's groups, then deletes the job's oldest snapshots of each volume
// beyond retain. The agent hosting a volume's engine takes and deletes
// the snapshots themselves.
type recurringJobReconciler struct {
	client.Client
	ns string
}

func (r *recurringJobReconciler) setup(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).Named("recurringjob").For(&v1alpha1.RecurringJob{}).Complete(r)
}

// nextRun is when the job runs next after from; the cron is five fields
// or a descriptor such as @hourly or @every 10m.
func nextRun(job *v1alpha1.RecurringJob, from time.Time) (time.Time, error) {
	sched, err := cron.ParseStandard(job.Spec.Cron)
	if err != nil {
		return time.Time{}, fmt.Errorf("recurring job %s: cron %q: %w", job.Name, job.Spec.Cron, err)
	}
	return sched.Next(from.UTC()), nil
}

func (r *recurringJobReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var job v1alpha1.RecurringJob
	if err := r.Get(ctx, req.NamespacedName, &job); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !job.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	last := job.CreationTimestamp.Time
	if job.Status.LastRunAt != nil {
		last = job.Status.LastRunAt.Time
	}
	next, err := nextRun(&job, last)
	if err != nil {
		return ctrl.Result{}, nil // the schema checks the shape; a bad expression waits for a fix
	}
	now := time.Now()
	if now.Before(next) {
		return ctrl.Result{RequeueAfter: next.Sub(now)}, nil
	}
	if err := r.run(ctx, &job, now); err != nil {
		return ctrl.Result{}, err
	}
	patch := client.MergeFrom(job.DeepCopy())
	job.Status.LastRunAt = &metav1.Time{Time: now}
	job.Status.ExecutionCount++
	if err := r.Status().Patch(ctx, &job, patch); err != nil {
		return ctrl.Result{}, fmt.Errorf("status of recurring job %s: %w", job.Name, err)
	}
	if next, err = nextRun(&job, now); err != nil {
		return ctrl.Result{}, nil
	}
	return ctrl.Result{RequeueAfter: next.Sub(now)}, nil
}

// inGroups reports whether a volume belongs to one of groups; "default"
// takes volumes with no group label.
func inGroups(vol *v1alpha1.Volume, groups []string) bool {
	hasAny := false
	for k := range vol.Labels {
		if len(k) > len(GroupLabelPrefix) && k[:len(GroupLabelPrefix)] == GroupLabelPrefix {
			hasAny = true
		}
	}
	for _, g := range groups {
		if _, ok := vol.Labels[GroupLabelPrefix+g]; ok || (g == "default" && !hasAny) {
			return true
		}
	}
	return false
}

// run snapshots every attached volume of the job's groups and trims each
// volume's snapshots of this job to the newest retain.
func (r *recurringJobReconciler) run(ctx context.Context, job *v1alpha1.RecurringJob, now time.Time) error {
	var vols v1alpha1.VolumeList
	if err := r.List(ctx, &vols, client.InNamespace(job.Namespace)); err != nil {
		return fmt.Errorf("list volumes: %w", err)
	}
	for i := range vols.Items {
		vol := &vols.Items[i]
		if !inGroups(vol, job.Spec.Groups) || vol.Status.State != v1alpha1.VolumeAttached {
			continue
		}
		labels := map[string]string{v1alpha1.LabelVolume: vol.Name, v1alpha1.LabelRecurringJob: job.Name}
		meta := metav1.ObjectMeta{Name: fmt.Sprintf("%s-%s-%d", vol.Name, job.Name, now.Unix()),
			Namespace: job.Namespace, Labels: labels}
		var obj client.Object = &v1alpha1.Snapshot{ObjectMeta: meta, Spec: v1alpha1.SnapshotSpec{Volume: vol.Name, Labels: job.Spec.Labels}}
		if job.Spec.Task == v1alpha1.RecurringJobBackup {
			obj = &v1alpha1.Backup{ObjectMeta: meta, Spec: v1alpha1.BackupSpec{Volume: vol.Name, BackupTarget: "default", Labels: job.Spec.Labels}}
		}
		if err := r.Create(ctx, obj); err != nil && !isAlreadyExists(err) {
			return fmt.Errorf("recurring job %s: %s of %s: %w", job.Name, job.Spec.Task, vol.Name, err)
		}
		if err := r.trim(ctx, job, vol.Name, obj); err != nil {
			return err
		}
	}
	return nil
}

// trim deletes the job's snapshots (or backups) of a volume beyond the
// newest retain; their names end in the run's time, so they sort by age.
// made is the object this run created, which the cache may not hold yet.
func (r *recurringJobReconciler) trim(ctx context.Context, job *v1alpha1.RecurringJob, vol string, made client.Object) error {
	sel := []client.ListOption{client.InNamespace(job.Namespace),
		client.MatchingLabels{v1alpha1.LabelVolume: vol, v1alpha1.LabelRecurringJob: job.Name}}
	var live []client.Object
	if job.Spec.Task == v1alpha1.RecurringJobBackup {
		var list v1alpha1.BackupList
		if err := r.List(ctx, &list, sel...); err != nil {
			return fmt.Errorf("list backups of %s: %w", vol, err)
		}
		for i := range list.Items {
			live = append(live, &list.Items[i])
		}
	} else {
		var list v1alpha1.SnapshotList
		if err := r.List(ctx, &list, sel...); err != nil {
			return fmt.Errorf("list snapshots of %s: %w", vol, err)
		}
		for i := range list.Items {
			live = append(live, &list.Items[i])
		}
	}
	kept := []client.Object{made}
	for _, o := range live {
		if o.GetDeletionTimestamp().IsZero() && o.GetName() != made.GetName() {
			kept = append(kept, o)
		}
	}
	sort.Slice(kept, func(i, j int) bool { return kept[i].GetName() > kept[j].GetName() }) // newest first
	for i := int(job.Spec.Retain); i < len(kept); i++ {
		if err := r.Delete(ctx, kept[i]); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("delete %s: %w", kept[i].GetName(), err)
		}
	}
	return nil
}
