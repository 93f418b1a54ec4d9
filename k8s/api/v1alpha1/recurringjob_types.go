package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// RecurringJobTask is what a recurring job makes.
// +kubebuilder:validation:Enum=snapshot;backup
type RecurringJobTask string

// Recurring job tasks.
const (
	RecurringJobSnapshot RecurringJobTask = "snapshot"
	RecurringJobBackup   RecurringJobTask = "backup"
)

// RecurringJobSpec is a schedule of snapshots or backups for a group of
// volumes.
type RecurringJobSpec struct {
	// Task is what each run makes: a snapshot, or a snapshot and its backup.
	Task RecurringJobTask `json:"task"`
	// Cron is the schedule in the standard five-field cron syntax
	// (minute hour day-of-month month day-of-week), in UTC, or a
	// descriptor: @hourly, @daily, @weekly, @monthly, @every DURATION.
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:XValidation:rule="self.startsWith('@') || self.split(' ').filter(f, f != '').size() == 5",message="cron must have five fields (minute hour day-of-month month day-of-week) or be a descriptor such as @hourly or @every 10m"
	Cron string `json:"cron"`
	// Retain is how many of the job's snapshots or backups each volume
	// keeps; older ones are deleted.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=250
	Retain int32 `json:"retain"`
	// Concurrency is how many volumes the job works on at once.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:default=1
	// +optional
	Concurrency int32 `json:"concurrency,omitempty"`
	// Groups lists the volume groups the job applies to: a volume is in
	// group G when it carries the label recurring-job-group.storage.drover.io/G.
	// "default" also takes volumes with no group label.
	// +optional
	// +listType=set
	Groups []string `json:"groups,omitempty"`
	// Labels are put on every snapshot and backup the job makes.
	// +optional
	Labels map[string]string `json:"labels,omitempty"`
}

// RecurringJobStatus is what the manager last did for the job.
type RecurringJobStatus struct {
	// LastRunAt is when the job last ran.
	// +optional
	LastRunAt *metav1.Time `json:"lastRunAt,omitempty"`
	// ExecutionCount counts the job's runs.
	// +optional
	ExecutionCount int64 `json:"executionCount,omitempty"`
}

// RecurringJob takes snapshots or backups of a group of volumes on a cron
// schedule and keeps the newest Retain of them.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=drj,categories=drover
// +kubebuilder:printcolumn:name="Task",type=string,JSONPath=`.spec.task`
// +kubebuilder:printcolumn:name="Cron",type=string,JSONPath=`.spec.cron`
// +kubebuilder:printcolumn:name="Retain",type=integer,JSONPath=`.spec.retain`
// +kubebuilder:printcolumn:name="Groups",type=string,JSONPath=`.spec.groups`
// +kubebuilder:printcolumn:name="LastRun",type=date,JSONPath=`.status.lastRunAt`
type RecurringJob struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   RecurringJobSpec   `json:"spec"`
	Status RecurringJobStatus `json:"status,omitempty"`
}

// RecurringJobList is a list of RecurringJobs.
//
// +kubebuilder:object:root=true
type RecurringJobList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []RecurringJob `json:"items"`
}

func init() { register(&RecurringJob{}, &RecurringJobList{}) }
