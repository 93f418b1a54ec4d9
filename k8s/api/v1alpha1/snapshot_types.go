package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// SnapshotSpec asks for a snapshot of a volume.
type SnapshotSpec struct {
	// Volume is the Volume to snapshot.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="volume is immutable"
	Volume string `json:"volume"`
	// Labels are stored with the snapshot.
	// +optional
	Labels map[string]string `json:"labels,omitempty"`
}

// SnapshotStatus is what the engine's agent reports of the snapshot.
type SnapshotStatus struct {
	// ReadyToUse is true once the snapshot exists on every RW replica.
	// +optional
	ReadyToUse bool `json:"readyToUse,omitempty"`
	// CreationTime is when the snapshot was taken.
	// +optional
	CreationTime *metav1.Time `json:"creationTime,omitempty"`
	// Size is the bytes the snapshot's layer holds.
	// +optional
	Size int64 `json:"size,omitempty"`
	// Error says why the snapshot failed, when it did.
	// +optional
	Error string `json:"error,omitempty"`
}

// Snapshot is a point-in-time, read-only layer of a volume.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=ds,categories=drover
// +kubebuilder:printcolumn:name="Volume",type=string,JSONPath=`.spec.volume`
// +kubebuilder:printcolumn:name="Ready",type=boolean,JSONPath=`.status.readyToUse`
// +kubebuilder:printcolumn:name="Size",type=integer,JSONPath=`.status.size`
// +kubebuilder:printcolumn:name="Created",type=date,JSONPath=`.status.creationTime`
type Snapshot struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   SnapshotSpec   `json:"spec"`
	Status SnapshotStatus `json:"status,omitempty"`
}

// SnapshotList is a list of Snapshots.
//
// +kubebuilder:object:root=true
type SnapshotList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Snapshot `json:"items"`
}

// BackupState is where a backup is.
// +kubebuilder:validation:Enum=New;Pending;InProgress;Completed;Error
type BackupState string

// Backup states.
const (
	BackupNew        BackupState = "New"
	BackupPending    BackupState = "Pending"
	BackupInProgress BackupState = "InProgress"
	BackupCompleted  BackupState = "Completed"
	BackupError      BackupState = "Error"
)

// BackupSpec asks for a backup of a volume to a backup target. The agent
// hosting the volume's engine takes a snapshot and backs it up, uploading
// only the chunks changed since the volume's last backup in the target.
type BackupSpec struct {
	// Volume is the Volume to back up; it must be attached.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="volume is immutable"
	Volume string `json:"volume"`
	// BackupTarget names the BackupTarget to write to.
	// +kubebuilder:default=default
	// +optional
	BackupTarget string `json:"backupTarget,omitempty"`
	// Labels are stored in the backup's manifest.
	// +optional
	Labels map[string]string `json:"labels,omitempty"`
}

// BackupStatus is what the engine's agent reports of the backup.
type BackupStatus struct {
	// State is where the backup is.
	// +optional
	State BackupState `json:"state,omitempty"`
	// URL names the backup in its target as VOLUME/ID; a Volume's
	// fromBackup takes it.
	// +optional
	URL string `json:"url,omitempty"`
	// SnapshotName is the volume snapshot the backup read.
	// +optional
	SnapshotName string `json:"snapshotName,omitempty"`
	// Progress is the percentage of the snapshot uploaded.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	// +optional
	Progress int32 `json:"progress,omitempty"`
	// VolumeName is the backed-up Volume.
	// +optional
	VolumeName string `json:"volumeName,omitempty"`
	// VolumeSize is the backed-up volume's size in bytes.
	// +optional
	VolumeSize int64 `json:"volumeSize,omitempty"`
	// Error says why the backup failed, when it did.
	// +optional
	Error string `json:"error,omitempty"`
}

// Backup is a copy of a snapshot in the backup target's object store.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=db,categories=drover
// +kubebuilder:printcolumn:name="Volume",type=string,JSONPath=`.spec.volume`
// +kubebuilder:printcolumn:name="State",type=string,JSONPath=`.status.state`
// +kubebuilder:printcolumn:name="Progress",type=integer,JSONPath=`.status.progress`
// +kubebuilder:printcolumn:name="URL",type=string,JSONPath=`.status.url`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Backup struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   BackupSpec   `json:"spec"`
	Status BackupStatus `json:"status,omitempty"`
}

// BackupList is a list of Backups.
//
// +kubebuilder:object:root=true
type BackupList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Backup `json:"items"`
}

// BackupTargetSpec says where backups go.
type BackupTargetSpec struct {
	// URL is the object store, as drover backup --target takes it:
	// s3://BUCKET/PREFIX?endpoint=HOST:PORT, or an absolute directory
	// path (a local disk or an NFS mount present on every node).
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="self.startsWith('s3://') || self.startsWith('/')",message="url must be s3://BUCKET/PREFIX?endpoint=HOST:PORT or an absolute directory path"
	URL string `json:"url"`
	// CredentialSecret names a Secret holding AWS_ACCESS_KEY_ID and
	// AWS_SECRET_ACCESS_KEY for an s3:// URL.
	// +optional
	CredentialSecret string `json:"credentialSecret,omitempty"`
	// PollInterval is how often the manager lists the target's backups.
	// +optional
	PollInterval *metav1.Duration `json:"pollInterval,omitempty"`
}

// BackupTargetStatus is what the manager last saw of the target.
type BackupTargetStatus struct {
	// Available is true when the target answered the last listing.
	// +optional
	Available bool `json:"available,omitempty"`
	// LastSyncedAt is when the target was last listed.
	// +optional
	LastSyncedAt *metav1.Time `json:"lastSyncedAt,omitempty"`
	// Conditions say why the target is unavailable, when it is.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// BackupTarget is an object store backups are written to.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=dbt,categories=drover
// +kubebuilder:printcolumn:name="URL",type=string,JSONPath=`.spec.url`
// +kubebuilder:printcolumn:name="Available",type=boolean,JSONPath=`.status.available`
// +kubebuilder:printcolumn:name="Synced",type=date,JSONPath=`.status.lastSyncedAt`
type BackupTarget struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   BackupTargetSpec   `json:"spec"`
	Status BackupTargetStatus `json:"status,omitempty"`
}

// BackupTargetList is a list of BackupTargets.
//
// +kubebuilder:object:root=true
type BackupTargetList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []BackupTarget `json:"items"`
}

func init() {
	register(&Snapshot{}, &SnapshotList{}, &Backup{}, &BackupList{},
		&BackupTarget{}, &BackupTargetList{})
}
