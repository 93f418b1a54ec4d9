// Package v1alpha1 holds the Drover Kubernetes API (group storage.drover.io,
// version v1alpha1): Volume, Engine, Replica, Node, Snapshot, Backup,
// BackupTarget, BackingImage, RecurringJob and Setting. These custom
// resources are the source of truth of a Drover cluster and the only
// channel between its components: users write Volume specs, the manager
// writes Engine and Replica specs with a node name, and each node's agent
// runs them and writes their status.
//
// The CRDs under deploy/crds are generated from these types by
// controller-gen (make crds); a test fails when they drift.
//
// +kubebuilder:object:generate=true
// +groupName=storage.drover.io
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion is the API group and version of every type here.
var GroupVersion = schema.GroupVersion{Group: "storage.drover.io", Version: "v1alpha1"}

// SchemeBuilder registers the types here with a runtime.Scheme.
var SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

// AddToScheme adds the types here to a runtime.Scheme.
var AddToScheme = SchemeBuilder.AddToScheme

// knownTypes are the types each file registers from its init function.
var knownTypes []runtime.Object

func register(objs ...runtime.Object) { knownTypes = append(knownTypes, objs...) }

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, knownTypes...)
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}

// Finalizer is set by the manager on objects it must clean up after
// (a Volume's Engine and Replicas, a Node's registrations) so that none
// is deleted while it is in use.
const Finalizer = "storage.drover.io/finalizer"

// BlockSizeBytes is Drover's block size; volume sizes are multiples of it.
const BlockSizeBytes = 4096

// Label keys the manager puts on the objects it creates, so that a
// controller can list a volume's or a node's objects with a selector.
const (
	// LabelVolume names the Volume an Engine, Replica, Snapshot or Backup belongs to.
	LabelVolume = "storage.drover.io/volume"
	// LabelNode names the node an Engine or Replica is assigned to.
	LabelNode = "storage.drover.io/node"
	// LabelRecurringJob names the RecurringJob that made a Snapshot or Backup.
	LabelRecurringJob = "storage.drover.io/recurring-job"
)

// InstanceState is the state of a running Engine or Replica instance.
// +kubebuilder:validation:Enum=stopped;starting;running;stopping;error
type InstanceState string

// Instance states, as an agent reports them.
const (
	InstanceStopped  InstanceState = "stopped"
	InstanceStarting InstanceState = "starting"
	InstanceRunning  InstanceState = "running"
	InstanceStopping InstanceState = "stopping"
	InstanceError    InstanceState = "error"
)

// DesiredState is what the manager wants an Engine or Replica instance to be.
// +kubebuilder:validation:Enum=stopped;running
type DesiredState string

// Desired instance states.
const (
	DesiredStopped DesiredState = "stopped"
	DesiredRunning DesiredState = "running"
)
