package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ReplicaSpec is the replica instance the manager wants run on a node's disk.
type ReplicaSpec struct {
	// VolumeName is the Volume this replica holds a copy of.
	// +kubebuilder:validation:MinLength=1
	VolumeName string `json:"volumeName"`
	// VolumeSize is the volume's size in bytes.
	// +kubebuilder:validation:Minimum=4096
	// +kubebuilder:validation:XValidation:rule="self % 4096 == 0",message="volumeSize must be a multiple of 4096 bytes (4 KiB)"
	VolumeSize int64 `json:"volumeSize"`
	// NodeID is the node whose agent runs the replica; empty while the
	// replica is not scheduled.
	// +optional
	NodeID string `json:"nodeID,omitempty"`
	// DiskName is the key of the Node's disk the replica's data lives on.
	// +optional
	DiskName string `json:"diskName,omitempty"`
	// DiskPath is that disk's path on the node, copied so the agent needs
	// no lookup.
	// +optional
	DiskPath string `json:"diskPath,omitempty"`
	// DataDirectoryName is the directory under DiskPath holding the data.
	// +optional
	DataDirectoryName string `json:"dataDirectoryName,omitempty"`
	// BackingImage names the BackingImage the replica reads through to.
	// +optional
	BackingImage string `json:"backingImage,omitempty"`
	// DesiredState is whether the replica should run.
	// +kubebuilder:default=stopped
	// +optional
	DesiredState DesiredState `json:"desiredState,omitempty"`
	// FailedAt is when the replica was last seen failed (its node down or
	// its mode ERR); unset while it is healthy. A replica failed for longer
	// than the volume's staleReplicaTimeout is replaced.
	// +optional
	FailedAt *metav1.Time `json:"failedAt,omitempty"`
	// HealthyAt is when the replica was last RW in its engine.
	// +optional
	HealthyAt *metav1.Time `json:"healthyAt,omitempty"`
}

// ReplicaStatus is what the replica's agent and engine report.
type ReplicaStatus struct {
	// CurrentState is the instance's state now.
	// +optional
	CurrentState InstanceState `json:"currentState,omitempty"`
	// Address is the replica's data address (host:port).
	// +optional
	Address string `json:"address,omitempty"`
	// Mode is the replica's mode in its volume's engine.
	// +optional
	Mode ReplicaMode `json:"mode,omitempty"`
	// Restarts counts how often the agent restarted the instance.
	// +optional
	Restarts int32 `json:"restarts,omitempty"`
	// Message says why the instance is in error, when it is.
	// +optional
	Message string `json:"message,omitempty"`
	// Conditions say why the replica is as it is: BackingImageReady is
	// False while the replica waits for its disk's copy of its backing
	// image, with the copy's state.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// ReplicaConditionBackingImageReady is true when the replica's disk holds
// a ready copy of its backing image (or it has none); a replica starts
// only then.
const ReplicaConditionBackingImageReady = "BackingImageReady"

// Replica is one copy of a volume's data on one node's disk.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=dr,categories=drover
// +kubebuilder:printcolumn:name="Volume",type=string,JSONPath=`.spec.volumeName`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.spec.nodeID`
// +kubebuilder:printcolumn:name="Disk",type=string,JSONPath=`.spec.diskName`
// +kubebuilder:printcolumn:name="State",type=string,JSONPath=`.status.currentState`
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.status.mode`
// +kubebuilder:printcolumn:name="Address",type=string,JSONPath=`.status.address`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Replica struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   ReplicaSpec   `json:"spec"`
	Status ReplicaStatus `json:"status,omitempty"`
}

// ReplicaList is a list of Replicas.
//
// +kubebuilder:object:root=true
type ReplicaList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Replica `json:"items"`
}

func init() { register(&Replica{}, &ReplicaList{}) }
