package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// BackingImageFileState is where a backing image's file on one disk is.
// +kubebuilder:validation:Enum=pending;in-progress;ready;failed
type BackingImageFileState string

// Backing image file states.
const (
	BackingImagePending    BackingImageFileState = "pending"
	BackingImageInProgress BackingImageFileState = "in-progress"
	BackingImageReady      BackingImageFileState = "ready"
	BackingImageFailed     BackingImageFileState = "failed"
)

// BackingImageSpec says where a backing image comes from and which disks
// should hold a copy.
type BackingImageSpec struct {
	// SourcePath is the image file (raw or qcow2) on SourceNode, imported
	// as drover backing-image create --from does.
	// +kubebuilder:validation:MaxLength=4096
	// +kubebuilder:validation:XValidation:rule="self.startsWith('/')",message="sourcePath must be absolute"
	SourcePath string `json:"sourcePath"`
	// SourceNode is the node holding SourcePath.
	// +kubebuilder:validation:MinLength=1
	SourceNode string `json:"sourceNode"`
	// Checksum is the image's expected SHA-256 in hex; empty trusts the source.
	// +kubebuilder:validation:Pattern=`^([0-9a-f]{64})?$`
	// +optional
	Checksum string `json:"checksum,omitempty"`
	// Disks lists "node/disk" names that should hold a copy; the manager
	// adds the disks of the replicas that use the image.
	// +optional
	// +listType=set
	Disks []string `json:"disks,omitempty"`
}

// BackingImageFileStatus is one disk's copy of a backing image.
type BackingImageFileStatus struct {
	// State is where the copy is.
	State BackingImageFileState `json:"state"`
	// Progress is the percentage copied.
	// +optional
	Progress int32 `json:"progress,omitempty"`
	// Message says why the copy failed, when it did.
	// +optional
	Message string `json:"message,omitempty"`
}

// BackingImageStatus is what the agents report of the image's copies.
type BackingImageStatus struct {
	// Size is the image's virtual size in bytes.
	// +optional
	Size int64 `json:"size,omitempty"`
	// Checksum is the SHA-256 the source node computed.
	// +optional
	Checksum string `json:"checksum,omitempty"`
	// DiskFileStatus maps "node/disk" to that disk's copy.
	// +optional
	DiskFileStatus map[string]BackingImageFileStatus `json:"diskFileStatus,omitempty"`
}

// BackingImage is a read-only base image volumes are created on; each
// disk that holds one of its volumes' replicas keeps a copy.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=dbi,categories=drover
// +kubebuilder:printcolumn:name="Size",type=integer,JSONPath=`.status.size`
// +kubebuilder:printcolumn:name="Checksum",type=string,JSONPath=`.status.checksum`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type BackingImage struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   BackingImageSpec   `json:"spec"`
	Status BackingImageStatus `json:"status,omitempty"`
}

// BackingImageList is a list of BackingImages.
//
// +kubebuilder:object:root=true
type BackingImageList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []BackingImage `json:"items"`
}

func init() { register(&BackingImage{}, &BackingImageList{}) }
