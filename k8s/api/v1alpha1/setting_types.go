package v1alpha1

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// SettingType is the type of a Setting's value.
type SettingType string

// Setting value types.
const (
	SettingInt      SettingType = "int"
	SettingBool     SettingType = "bool"
	SettingDuration SettingType = "duration"
	SettingEnum     SettingType = "enum"
)

// Setting names. Each Setting object is named by one of these.
const (
	SettingDefaultReplicaCount           = "default-replica-count"
	SettingStaleReplicaTimeout           = "stale-replica-timeout"
	SettingStorageMinimalAvailablePct    = "storage-minimal-available-percentage"
	SettingStorageOverProvisioningPct    = "storage-over-provisioning-percentage"
	SettingReplicaNodeSoftAntiAffinity   = "replica-node-soft-anti-affinity"
	SettingReplicaZoneSoftAntiAffinity   = "replica-zone-soft-anti-affinity"
	SettingReplicaDiskSoftAntiAffinity   = "replica-disk-soft-anti-affinity"
	SettingConcurrentRebuildsPerNode     = "concurrent-replica-rebuild-per-node-limit"
	SettingReplicaRebuildRateBytesPerS   = "replica-rebuild-rate-bytes-per-sec"
	SettingNodeDownGracePeriod           = "node-down-grace-period"
	SettingRecurringSnapshotMaxPerVolume = "recurring-snapshot-max-per-volume"
	SettingReplicaAutoBalance            = "replica-auto-balance"
	SettingBackingImageCleanupWait       = "backing-image-cleanup-wait-interval"
)

// SettingDefinition describes one Setting: its type, default and bounds.
type SettingDefinition struct {
	Type        SettingType
	Default     string
	Min, Max    int64    // bounds of an int setting
	Options     []string // the values an enum setting takes
	Description string
}

// SettingDefinitions holds every Setting the manager knows. The CRD's CEL
// rules repeat the names and types (a test keeps them in step), so an
// unknown name or a badly typed value is refused by the API server.
var SettingDefinitions = map[string]SettingDefinition{
	SettingDefaultReplicaCount: {Type: SettingInt, Default: "3", Min: 1, Max: 20,
		Description: "replicas of a volume whose spec leaves numberOfReplicas unset"},
	SettingStaleReplicaTimeout: {Type: SettingDuration, Default: "30m",
		Description: "how long a replica may stay failed before it is replaced on another node, for volumes that leave staleReplicaTimeout unset"},
	SettingStorageMinimalAvailablePct: {Type: SettingInt, Default: "25", Min: 0, Max: 100,
		Description: "a disk whose free space would fall below this percentage of its size takes no new replica"},
	SettingStorageOverProvisioningPct: {Type: SettingInt, Default: "100", Min: 0, Max: 1000,
		Description: "the sizes of the replicas scheduled on a disk may add up to this percentage of its usable space"},
	SettingReplicaNodeSoftAntiAffinity: {Type: SettingBool, Default: "false",
		Description: "when true, two replicas of a volume may share a node (on different disks) if no other node fits"},
	SettingReplicaZoneSoftAntiAffinity: {Type: SettingBool, Default: "true",
		Description: "when true, replicas prefer different zones but may share one; when false, they never do"},
	SettingReplicaDiskSoftAntiAffinity: {Type: SettingBool, Default: "true",
		Description: "when true, replicas prefer different disks but may share one; when false, they never do"},
	SettingConcurrentRebuildsPerNode: {Type: SettingInt, Default: "5", Min: 0, Max: 100,
		Description: "rebuilds a node may run at once (0: no limit)"},
	SettingReplicaRebuildRateBytesPerS: {Type: SettingInt, Default: "0", Min: 0, Max: 1 << 40,
		Description: "rebuild copy rate per replica in bytes per second (0: no limit)"},
	SettingNodeDownGracePeriod: {Type: SettingDuration, Default: "30s",
		Description: "how long a node's agent may miss heartbeats before its replicas count as failed"},
	SettingRecurringSnapshotMaxPerVolume: {Type: SettingInt, Default: "250", Min: 1, Max: 250,
		Description: "most snapshots a recurring job keeps per volume, whatever its retain says"},
	SettingReplicaAutoBalance: {Type: SettingEnum, Default: "disabled", Options: []string{"disabled", "least-effort", "best-effort"},
		Description: "whether healthy volumes' replicas move to spread over nodes (least-effort) and zones too (best-effort), for volumes that leave it to the cluster"},
	SettingBackingImageCleanupWait: {Type: SettingDuration, Default: "30m",
		Description: "how long a disk's copy of a backing image no replica there uses is kept before its agent removes it"},
}

// ParseSettingValue checks a value against its Setting's definition.
func ParseSettingValue(name, value string) error {
	def, ok := SettingDefinitions[name]
	if !ok {
		return fmt.Errorf("unknown setting %q", name)
	}
	switch def.Type {
	case SettingInt:
		n, err := strconv.ParseInt(value, 10, 64)
		if err != nil {
			return fmt.Errorf("setting %s: value %q is not an integer", name, value)
		}
		if n < def.Min || n > def.Max {
			return fmt.Errorf("setting %s: value %d is outside [%d, %d]", name, n, def.Min, def.Max)
		}
	case SettingBool:
		if _, err := strconv.ParseBool(value); err != nil {
			return fmt.Errorf("setting %s: value %q is not true or false", name, value)
		}
	case SettingDuration:
		if _, err := time.ParseDuration(value); err != nil {
			return fmt.Errorf("setting %s: value %q is not a duration: %w", name, value, err)
		}
	case SettingEnum:
		if !slices.Contains(def.Options, value) {
			return fmt.Errorf("setting %s: value %q is not one of %s", name, value, strings.Join(def.Options, ", "))
		}
	}
	return nil
}

// Setting is one cluster-wide knob of the manager, named by one of
// SettingDefinitions' keys; its value is a string of the setting's type.
// The manager creates every Setting with its default at start.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:shortName=dset,categories=drover
// +kubebuilder:printcolumn:name="Value",type=string,JSONPath=`.value`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="self.metadata.name in ['default-replica-count', 'stale-replica-timeout', 'storage-minimal-available-percentage', 'storage-over-provisioning-percentage', 'replica-node-soft-anti-affinity', 'replica-zone-soft-anti-affinity', 'replica-disk-soft-anti-affinity', 'concurrent-replica-rebuild-per-node-limit', 'replica-rebuild-rate-bytes-per-sec', 'node-down-grace-period', 'recurring-snapshot-max-per-volume', 'replica-auto-balance', 'backing-image-cleanup-wait-interval']",message="metadata.name is not a known setting"
// +kubebuilder:validation:XValidation:rule="!(self.metadata.name in ['default-replica-count', 'storage-minimal-available-percentage', 'storage-over-provisioning-percentage', 'concurrent-replica-rebuild-per-node-limit', 'replica-rebuild-rate-bytes-per-sec', 'recurring-snapshot-max-per-volume']) || self.value.matches('^[0-9]+$')",message="value must be a non-negative integer"
// +kubebuilder:validation:XValidation:rule="!(self.metadata.name in ['replica-node-soft-anti-affinity', 'replica-zone-soft-anti-affinity', 'replica-disk-soft-anti-affinity']) || self.value in ['true', 'false']",message="value must be true or false"
// +kubebuilder:validation:XValidation:rule="!(self.metadata.name in ['stale-replica-timeout', 'node-down-grace-period', 'backing-image-cleanup-wait-interval']) || self.value.matches('^([0-9]+(ms|s|m|h))+$')",message="value must be a duration such as 30s, 10m or 1h30m"
// +kubebuilder:validation:XValidation:rule="self.metadata.name != 'replica-auto-balance' || self.value in ['disabled', 'least-effort', 'best-effort']",message="value must be disabled, least-effort or best-effort"
type Setting struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Value is the setting's value as a string: an integer, true/false or
	// a duration, as its name's definition says.
	// +kubebuilder:validation:MaxLength=64
	Value string `json:"value"`
}

// SettingList is a list of Settings.
//
// +kubebuilder:object:root=true
type SettingList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Setting `json:"items"`
}

func init() { register(&Setting{}, &SettingList{}) }
