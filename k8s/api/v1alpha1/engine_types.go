package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ReplicaMode is a replica's place in its engine's replica set.
// +kubebuilder:validation:Enum=RW;WO;ERR
type ReplicaMode string

// Replica modes, as the engine sees them.
const (
	// ReplicaModeRW is a current replica: it takes writes and serves reads.
	ReplicaModeRW ReplicaMode = "RW"
	// ReplicaModeWO is a replica being rebuilt: it takes writes only.
	ReplicaModeWO ReplicaMode = "WO"
	// ReplicaModeERR is a replica that failed and left the set.
	ReplicaModeERR ReplicaMode = "ERR"
)

// EngineSpec is the engine instance the manager wants run on a node.
type EngineSpec struct {
	// VolumeName is the Volume this engine serves.
	// +kubebuilder:validation:MinLength=1
	VolumeName string `json:"volumeName"`
	// VolumeSize is the volume's size in bytes.
	// +kubebuilder:validation:Minimum=4096
	// +kubebuilder:validation:XValidation:rule="self % 4096 == 0",message="volumeSize must be a multiple of 4096 bytes (4 KiB)"
	VolumeSize int64 `json:"volumeSize"`
	// NodeID is the node whose agent runs the engine.
	// +optional
	NodeID string `json:"nodeID,omitempty"`
	// Frontend is how the node's host sees the volume.
	// +kubebuilder:default=nbd
	// +optional
	Frontend Frontend `json:"frontend,omitempty"`
	// DesiredState is whether the engine should run.
	// +kubebuilder:default=stopped
	// +optional
	DesiredState DesiredState `json:"desiredState,omitempty"`
	// RestoreFrom is a backup (VOLUME/ID or VOLUME/latest) the engine
	// writes into the volume before serving it, in the object store at
	// RestoreTarget; set while the volume's fromBackup is not restored.
	// +optional
	RestoreFrom string `json:"restoreFrom,omitempty"`
	// RestoreTarget is the backup target's URL for RestoreFrom.
	// +optional
	RestoreTarget string `json:"restoreTarget,omitempty"`
	// ReplicaAddressMap maps each Replica's name to its data address
	// (host:port) for the replicas the engine should open.
	// +optional
	ReplicaAddressMap map[string]string `json:"replicaAddressMap,omitempty"`
	// QoS is the volume's IO limits, applied to the running engine's
	// frontend as they change.
	// +optional
	QoS *VolumeQoS `json:"qos,omitempty"`
}

// The agent's NBD server exports each engine's volume twice: under the
// volume's name (EngineStatus.Endpoint), with its size, and under the
// name plus GrowableExportSuffix, advertising GrowableExportBytes, where
// IO past the volume's real end fails. A host that sees an export's size
// once (nbdfuse) attaches the growable one behind a loop device limited
// to the real size, and grows that limit when the volume grows: online
// expansion with no reconnect.
const (
	GrowableExportSuffix = "~growable"
	GrowableExportBytes  = 1 << 50
)

// EngineStatus is what the engine's agent reports.
type EngineStatus struct {
	// CurrentState is the instance's state now.
	// +optional
	CurrentState InstanceState `json:"currentState,omitempty"`
	// Endpoint is the frontend address the host connects to.
	// +optional
	Endpoint string `json:"endpoint,omitempty"`
	// ControlAddress is the engine's gRPC control address.
	// +optional
	ControlAddress string `json:"controlAddress,omitempty"`
	// ReplicaModeMap maps each Replica's name to its mode in the engine.
	// +optional
	ReplicaModeMap map[string]ReplicaMode `json:"replicaModeMap,omitempty"`
	// RestoredFrom is the RestoreFrom the engine has written into the
	// volume.
	// +optional
	RestoredFrom string `json:"restoredFrom,omitempty"`
	// QoS is the IO limits the running engine's frontend enforces now.
	// +optional
	QoS *VolumeQoS `json:"qos,omitempty"`
	// Restarts counts how often the agent restarted the instance.
	// +optional
	Restarts int32 `json:"restarts,omitempty"`
	// Message says why the instance is in error, when it is.
	// +optional
	Message string `json:"message,omitempty"`
}

// Engine is a volume's engine instance: it runs on one node and
// replicates every write to the replicas of its ReplicaAddressMap.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=de,categories=drover
// +kubebuilder:printcolumn:name="Volume",type=string,JSONPath=`.spec.volumeName`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.spec.nodeID`
// +kubebuilder:printcolumn:name="Desired",type=string,JSONPath=`.spec.desiredState`
// +kubebuilder:printcolumn:name="State",type=string,JSONPath=`.status.currentState`
// +kubebuilder:printcolumn:name="Endpoint",type=string,JSONPath=`.status.endpoint`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Engine struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   EngineSpec   `json:"spec"`
	Status EngineStatus `json:"status,omitempty"`
}

// EngineList is a list of Engines.
//
// +kubebuilder:object:root=true
type EngineList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Engine `json:"items"`
}

func init() { register(&Engine{}, &EngineList{}) }
