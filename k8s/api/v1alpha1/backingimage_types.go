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

// BackingImageSpec says where a backing image comes from. Each disk that
// holds a replica of a volume on the image gets its own copy, made by
// that node's agent before the replica starts.
//
// +kubebuilder:validation:XValidation:rule="has(self.url) != has(self.sourcePath)",message="give exactly one of url and sourcePath"
type BackingImageSpec struct {
	// URL is an http or https address of the image file (raw or qcow2);
	// each node's agent that needs a copy downloads it.
	// +kubebuilder:validation:MaxLength=4096
	// +kubebuilder:validation:Pattern=`^https?://`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="url is immutable"
	// +optional
	URL string `json:"url,omitempty"`
	// SourcePath is an image file (raw or qcow2) on the node's own
	// filesystem, imported by each agent that needs a copy (as drover
	// backing-image create --from does): a path every such node has, such
	// as a shared mount or a file an image pre-pull job put there.
	// +kubebuilder:validation:MaxLength=4096
	// +kubebuilder:validation:XValidation:rule="self.startsWith('/')",message="sourcePath must be absolute"
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="sourcePath is immutable"
	// +optional
	SourcePath string `json:"sourcePath,omitempty"`
	// Checksum is the SHA-256 in hex of the image file as the source
	// serves it (what sha256sum prints); a copy whose content differs
	// fails and is not used. Empty trusts the source.
	// +kubebuilder:validation:Pattern=`^([0-9a-f]{64})?$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="checksum is immutable"
	// +optional
	Checksum string `json:"checksum,omitempty"`
	// Disks lists "node/disk" names that should hold a copy even while no
	// replica there uses the image (to have it ready before volumes come).
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
	// Checksum is the SHA-256 of the file this copy was made from.
	// +optional
	Checksum string `json:"checksum,omitempty"`
	// UnusedSince is when the agent last found the copy used by no
	// replica on its disk (unset while one uses it); the copy is removed
	// once it has been unused for the backing-image-cleanup-wait-interval
	// Setting.
	// +optional
	UnusedSince *metav1.Time `json:"unusedSince,omitempty"`
}

// BackingImageStatus is what the agents report of the image's copies.
type BackingImageStatus struct {
	// Size is the image's virtual size in bytes.
	// +optional
	Size int64 `json:"size,omitempty"`
	// Checksum is the SHA-256 of the image file, from the first ready copy.
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
// +kubebuilder:printcolumn:name="Source",type=string,JSONPath=`.spec.url`
// +kubebuilder:printcolumn:name="Path",type=string,JSONPath=`.spec.sourcePath`,priority=1
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
