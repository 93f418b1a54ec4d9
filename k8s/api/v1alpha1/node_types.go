package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Node condition types.
const (
	// NodeConditionReady is true while the node's agent reports in.
	NodeConditionReady = "Ready"
	// NodeConditionSchedulable is true when new replicas may go to the node.
	NodeConditionSchedulable = "Schedulable"
)

// DiskSpec is one disk (a directory on a filesystem) replicas may use.
type DiskSpec struct {
	// Path is the disk's directory on the node.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=4096
	// +kubebuilder:validation:XValidation:rule="self.startsWith('/')",message="path must be absolute"
	Path string `json:"path"`
	// StorageReserved is the bytes of the disk Drover must leave free.
	// +kubebuilder:validation:Minimum=0
	// +optional
	StorageReserved int64 `json:"storageReserved,omitempty"`
	// AllowScheduling says whether new replicas may go to the disk.
	// +kubebuilder:default=true
	// +optional
	AllowScheduling bool `json:"allowScheduling"`
	// Tags are matched against a volume's diskSelector.
	// +optional
	// +listType=set
	Tags []string `json:"tags,omitempty"`
}

// NodeSpec is how an administrator wants a node used.
type NodeSpec struct {
	// Disks are the node's disks by name. The agent registers the disks it
	// was started with; an administrator may add, tag or fence them.
	// +optional
	Disks map[string]DiskSpec `json:"disks,omitempty"`
	// AllowScheduling says whether new replicas may go to the node.
	// +kubebuilder:default=true
	// +optional
	AllowScheduling bool `json:"allowScheduling"`
	// Tags are matched against a volume's nodeSelector.
	// +optional
	// +listType=set
	Tags []string `json:"tags,omitempty"`
}

// DiskStatus is what the agent measured of a disk and what the manager
// has scheduled onto it.
type DiskStatus struct {
	// StorageMaximum is the disk filesystem's size in bytes.
	// +optional
	StorageMaximum int64 `json:"storageMaximum,omitempty"`
	// StorageAvailable is the bytes free on the disk's filesystem now.
	// +optional
	StorageAvailable int64 `json:"storageAvailable,omitempty"`
	// StorageScheduled is the sum of the sizes of the replicas scheduled
	// on the disk (what they may grow to, not what they hold).
	// +optional
	StorageScheduled int64 `json:"storageScheduled,omitempty"`
	// ScheduledReplicas maps each Replica's name to its size in bytes.
	// +optional
	ScheduledReplicas map[string]int64 `json:"scheduledReplicas,omitempty"`
	// Message says why the disk is not usable, when it is not.
	// +optional
	Message string `json:"message,omitempty"`
}

// NodeStatus is what is true of a node now.
type NodeStatus struct {
	// Address is the node's data address replicas listen on.
	// +optional
	Address string `json:"address,omitempty"`
	// Zone is the node's failure zone (its topology.kubernetes.io/zone).
	// +optional
	Zone string `json:"zone,omitempty"`
	// DiskStatus maps each disk's name to its capacity and use.
	// +optional
	DiskStatus map[string]DiskStatus `json:"diskStatus,omitempty"`
	// LastHeartbeat is when the agent last reported in.
	// +optional
	LastHeartbeat *metav1.Time `json:"lastHeartbeat,omitempty"`
	// Conditions are Ready and Schedulable.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// Node is a Kubernetes node as Drover sees it: its disks and whether its
// agent is up. The agent creates it under the node's name.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=dn,categories=drover
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="AllowScheduling",type=boolean,JSONPath=`.spec.allowScheduling`
// +kubebuilder:printcolumn:name="Zone",type=string,JSONPath=`.status.zone`
// +kubebuilder:printcolumn:name="Address",type=string,JSONPath=`.status.address`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Node struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   NodeSpec   `json:"spec,omitempty"`
	Status NodeStatus `json:"status,omitempty"`
}

// NodeList is a list of Nodes.
//
// +kubebuilder:object:root=true
type NodeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Node `json:"items"`
}

func init() { register(&Node{}, &NodeList{}) }
