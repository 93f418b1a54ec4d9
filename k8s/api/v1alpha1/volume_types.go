package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Frontend is how the attaching node's host sees a volume.
// +kubebuilder:validation:Enum=nbd;iscsi
type Frontend string

// Frontends.
const (
	FrontendNBD   Frontend = "nbd"
	FrontendISCSI Frontend = "iscsi"
)

// DataLocality says whether a replica is kept on the node that runs the
// volume's engine.
// +kubebuilder:validation:Enum=disabled;best-effort;strict-local
type DataLocality string

// Data locality modes.
const (
	// DataLocalityDisabled places replicas by the scheduler's rules only.
	DataLocalityDisabled DataLocality = "disabled"
	// DataLocalityBestEffort moves a replica to the engine's node in the
	// background, then drops the farthest one.
	DataLocalityBestEffort DataLocality = "best-effort"
	// DataLocalityStrictLocal keeps the volume's single replica beside its
	// engine, reached over the in-process link.
	DataLocalityStrictLocal DataLocality = "strict-local"
)

// ReplicaAutoBalance says whether the manager moves replicas to even out
// nodes and zones.
// +kubebuilder:validation:Enum=ignored;disabled;least-effort;best-effort
type ReplicaAutoBalance string

// Replica auto-balance modes.
const (
	AutoBalanceIgnored     ReplicaAutoBalance = "ignored" // follow the cluster's Setting
	AutoBalanceDisabled    ReplicaAutoBalance = "disabled"
	AutoBalanceLeastEffort ReplicaAutoBalance = "least-effort" // spread over nodes
	AutoBalanceBestEffort  ReplicaAutoBalance = "best-effort"  // over nodes, then zones
)

// VolumeState is where a volume is in its lifecycle.
// +kubebuilder:validation:Enum=creating;detached;attaching;attached;detaching;deleting
type VolumeState string

// Volume states.
const (
	VolumeCreating  VolumeState = "creating"
	VolumeDetached  VolumeState = "detached"
	VolumeAttaching VolumeState = "attaching"
	VolumeAttached  VolumeState = "attached"
	VolumeDetaching VolumeState = "detaching"
	VolumeDeleting  VolumeState = "deleting"
)

// Robustness is how many of a volume's wanted replicas are healthy.
// +kubebuilder:validation:Enum=healthy;degraded;faulted;unknown
type Robustness string

// Robustness values.
const (
	RobustnessHealthy  Robustness = "healthy"
	RobustnessDegraded Robustness = "degraded"
	RobustnessFaulted  Robustness = "faulted"
	RobustnessUnknown  Robustness = "unknown"
)

// Volume condition types.
const (
	// VolumeConditionScheduled is true when every wanted replica has a
	// node and disk; when false its message says why not.
	VolumeConditionScheduled = "Scheduled"
	// VolumeConditionAttachable is false, with the reason, while the
	// volume cannot be attached where spec.nodeID asks (a strict-local
	// volume's replica is on another node).
	VolumeConditionAttachable = "Attachable"
	// VolumeConditionBackingImageReady is false, with a replica's reason,
	// while a replica waits for its disk's copy of the backing image.
	VolumeConditionBackingImageReady = "BackingImageReady"
	// VolumeConditionRestored is true once a volume made from a backup
	// holds the backup's data.
	VolumeConditionRestored = "Restored"
)

// VolumeSpec is the volume a user asks for.
//
// +kubebuilder:validation:XValidation:rule="!has(self.dataLocality) || self.dataLocality != 'strict-local' || !has(self.numberOfReplicas) || self.numberOfReplicas == 1",message="dataLocality strict-local needs numberOfReplicas 1"
type VolumeSpec struct {
	// Size is the volume's size in bytes, a multiple of 4096 (4 KiB).
	// It can grow (online expansion) but never shrink.
	// +kubebuilder:validation:Minimum=4096
	// +kubebuilder:validation:XValidation:rule="self % 4096 == 0",message="size must be a multiple of 4096 bytes (4 KiB)"
	// +kubebuilder:validation:XValidation:rule="self >= oldSelf",message="size cannot shrink"
	Size int64 `json:"size"`

	// NumberOfReplicas is how many copies of the data the volume keeps, each
	// on a different node. Unset means the default-replica-count Setting.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=20
	// +optional
	NumberOfReplicas *int32 `json:"numberOfReplicas,omitempty"`

	// Frontend is how the attaching node's host sees the volume.
	// +kubebuilder:default=nbd
	// +optional
	Frontend Frontend `json:"frontend,omitempty"`

	// DataLocality says whether a replica is kept on the engine's node.
	// +kubebuilder:default=disabled
	// +optional
	DataLocality DataLocality `json:"dataLocality,omitempty"`

	// StaleReplicaTimeout is how long a replica may stay failed (its node
	// down, its disk gone) before it is replaced by a new one on another
	// node. Unset means the stale-replica-timeout Setting.
	// +optional
	StaleReplicaTimeout *metav1.Duration `json:"staleReplicaTimeout,omitempty"`

	// FromBackup is a backup the volume starts from, as VOLUME/ID (a
	// Backup's status.url) or VOLUME/latest, in the BackupTarget named
	// "default". The backup is restored the first time the volume is
	// attached, before its endpoint is published; the Restored condition
	// says when it is done.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="fromBackup is immutable"
	FromBackup string `json:"fromBackup,omitempty"`

	// BackingImage names a BackingImage the volume's replicas read through
	// to; it is immutable.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="backingImage is immutable"
	BackingImage string `json:"backingImage,omitempty"`

	// NodeSelector lists node tags; replicas go only to nodes holding all of them.
	// +optional
	// +listType=set
	NodeSelector []string `json:"nodeSelector,omitempty"`

	// DiskSelector lists disk tags; replicas go only to disks holding all of them.
	// +optional
	// +listType=set
	DiskSelector []string `json:"diskSelector,omitempty"`

	// ReplicaAutoBalance says whether replicas are moved to even out nodes
	// and zones; unset or "ignored" follows the cluster's Setting.
	// +optional
	ReplicaAutoBalance ReplicaAutoBalance `json:"replicaAutoBalance,omitempty"`

	// NodeID is the node the volume is attached to (its engine runs
	// there); empty means detached.
	// +optional
	NodeID string `json:"nodeID,omitempty"`

	// QoS limits the volume's IO at its frontend; it can change while
	// the volume is attached, without restarting the engine.
	// +optional
	QoS *VolumeQoS `json:"qos,omitempty"`

	// EncryptionKeySecret names a Secret in the volume's namespace whose
	// "key" is the volume's AES-256-XTS key (64 bytes as hex, as drover
	// key new writes it, or a wrapped key with the passphrase in
	// "passphrase"). The engine encrypts every block before replication:
	// replicas, rebuilds and backups hold only ciphertext. Set at creation.
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="encryptionKeySecret cannot change"
	// +optional
	EncryptionKeySecret string `json:"encryptionKeySecret,omitempty"`
}

// VolumeQoS are a volume's IO limits, enforced in its engine's frontend
// (token buckets refilled every 100 ms). Zero or unset means no limit.
type VolumeQoS struct {
	// MaxIOPS is the most reads, writes, trims and write-zeroes a second.
	// +kubebuilder:validation:Minimum=0
	// +optional
	MaxIOPS int64 `json:"maxIOPS,omitempty"`
	// MaxBandwidthBytes is the most bytes read and written a second.
	// +kubebuilder:validation:Minimum=0
	// +optional
	MaxBandwidthBytes int64 `json:"maxBandwidthBytes,omitempty"`
}

// VolumeStatus is what is true of a volume now.
type VolumeStatus struct {
	// State is where the volume is in its lifecycle.
	// +optional
	State VolumeState `json:"state,omitempty"`
	// Robustness is how many of the wanted replicas are healthy.
	// +optional
	Robustness Robustness `json:"robustness,omitempty"`
	// CurrentNodeID is the node the engine runs on now.
	// +optional
	CurrentNodeID string `json:"currentNodeID,omitempty"`
	// Endpoint is where the host reaches the volume (an NBD or iSCSI address).
	// +optional
	Endpoint string `json:"endpoint,omitempty"`
	// EncryptionKeyCheck is a check value of the key the volume was first
	// served with (never the key): an engine refuses a key that does not
	// match it rather than serve garbage.
	// +optional
	EncryptionKeyCheck string `json:"encryptionKeyCheck,omitempty"`
	// ActualSize is the bytes the volume's data takes on one replica.
	// +optional
	ActualSize int64 `json:"actualSize,omitempty"`
	// ReplicasReady counts replicas in mode RW.
	// +optional
	ReplicasReady int32 `json:"replicasReady,omitempty"`
	// ObservedGeneration is the spec generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Conditions say why the volume is as it is (Scheduled, Restored).
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// Volume is a replicated block device. Its engine runs on the node it is
// attached to and replicates every write to its replicas on other nodes.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=dv,categories=drover
// +kubebuilder:printcolumn:name="State",type=string,JSONPath=`.status.state`
// +kubebuilder:printcolumn:name="Robustness",type=string,JSONPath=`.status.robustness`
// +kubebuilder:printcolumn:name="Size",type=integer,JSONPath=`.spec.size`
// +kubebuilder:printcolumn:name="Replicas",type=integer,JSONPath=`.spec.numberOfReplicas`
// +kubebuilder:printcolumn:name="Ready",type=integer,JSONPath=`.status.replicasReady`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.status.currentNodeID`
// +kubebuilder:printcolumn:name="Locality",type=string,JSONPath=`.spec.dataLocality`,priority=1
// +kubebuilder:printcolumn:name="Endpoint",type=string,JSONPath=`.status.endpoint`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Volume struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   VolumeSpec   `json:"spec"`
	Status VolumeStatus `json:"status,omitempty"`
}

// VolumeList is a list of Volumes.
//
// +kubebuilder:object:root=true
type VolumeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Volume `json:"items"`
}

func init() { register(&Volume{}, &VolumeList{}) }
