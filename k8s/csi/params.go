package csi

import (
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
)

// StorageClass parameter names CreateVolume understands (the Longhorn
// StorageClass's names, so a cluster migrating keeps its classes).
const (
	ParamNumberOfReplicas     = "numberOfReplicas"
	ParamStaleReplicaTimeout  = "staleReplicaTimeout"
	ParamFromBackup           = "fromBackup"
	ParamDataLocality         = "dataLocality"
	ParamBackingImage         = "backingImage"
	ParamFrontend             = "frontend"
	ParamDiskSelector         = "diskSelector"
	ParamNodeSelector         = "nodeSelector"
	ParamEncrypted            = "encrypted"
	ParamRecurringJobSelector = "recurringJobSelector"
)

// kubernetesParamPrefix marks parameters the external-provisioner adds
// itself (PVC and PV names with --extra-create-metadata); they carry no
// setting of the volume.
const kubernetesParamPrefix = "csi.storage.k8s.io/"

// RecurringJobGroupLabelPrefix puts a Volume in a RecurringJob group.
const RecurringJobGroupLabelPrefix = "recurring-job-group.storage.drover.io/"

// maxVolumeSizeBytes is the largest size CreateVolume accepts before
// asking the scheduler: 1 PiB per replica.
const maxVolumeSizeBytes = 1 << 50

// ParamError is a StorageClass parameter CreateVolume refuses.
type ParamError struct {
	Name   string
	Value  string
	Reason string
}

func (e *ParamError) Error() string {
	return fmt.Sprintf("parameter %s=%q: %s", e.Name, e.Value, e.Reason)
}

// VolumeParams is what a StorageClass's parameters ask of a Volume.
type VolumeParams struct {
	NumberOfReplicas    *int32
	StaleReplicaTimeout *metav1.Duration
	FromBackup          string
	DataLocality        v1alpha1.DataLocality
	BackingImage        string
	Frontend            v1alpha1.Frontend
	DiskSelector        []string
	NodeSelector        []string
	// Groups are the RecurringJob groups the volume joins.
	Groups []string
}

// ParseParams turns StorageClass parameters into VolumeParams. An unknown
// or malformed parameter is a *ParamError naming it.
func ParseParams(params map[string]string) (VolumeParams, error) {
	var p VolumeParams
	names := make([]string, 0, len(params))
	for k := range params {
		names = append(names, k)
	}
	sort.Strings(names) // the first bad one reported is always the same
	for _, name := range names {
		if err := p.set(name, params[name]); err != nil {
			return VolumeParams{}, err
		}
	}
	if p.DataLocality == v1alpha1.DataLocalityStrictLocal && p.NumberOfReplicas != nil && *p.NumberOfReplicas != 1 {
		return VolumeParams{}, &ParamError{Name: ParamDataLocality, Value: string(p.DataLocality),
			Reason: fmt.Sprintf("strict-local needs numberOfReplicas 1, not %d", *p.NumberOfReplicas)}
	}
	return p, nil
}

func (p *VolumeParams) set(name, value string) error {
	bad := func(format string, args ...any) error {
		return &ParamError{Name: name, Value: value, Reason: fmt.Sprintf(format, args...)}
	}
	switch name {
	case ParamNumberOfReplicas:
		n, err := strconv.ParseInt(strings.TrimSpace(value), 10, 32)
		if err != nil || n < 1 || n > 20 {
			return bad("want an integer from 1 to 20")
		}
		n32 := int32(n)
		p.NumberOfReplicas = &n32
	case ParamStaleReplicaTimeout:
		d, err := parseMinutes(value)
		if err != nil {
			return bad("%v", err)
		}
		p.StaleReplicaTimeout = &metav1.Duration{Duration: d}
	case ParamFromBackup:
		if len(value) > 1024 {
			return bad("longer than 1024 bytes")
		}
		p.FromBackup = value
	case ParamDataLocality:
		switch l := v1alpha1.DataLocality(value); l {
		case v1alpha1.DataLocalityDisabled, v1alpha1.DataLocalityBestEffort, v1alpha1.DataLocalityStrictLocal:
			p.DataLocality = l
		default:
			return bad("want disabled, best-effort or strict-local")
		}
	case ParamBackingImage:
		if value != "" {
			if errs := validation.IsDNS1123Subdomain(value); len(errs) > 0 {
				return bad("not a BackingImage name: %s", strings.Join(errs, "; "))
			}
		}
		p.BackingImage = value
	case ParamFrontend:
		switch value {
		case "nbd", "blockdev": // Longhorn's "blockdev" is a host block device: NBD here
			p.Frontend = v1alpha1.FrontendNBD
		case "iscsi":
			p.Frontend = v1alpha1.FrontendISCSI
		default:
			return bad("want nbd (or Longhorn's blockdev) or iscsi")
		}
	case ParamDiskSelector, ParamNodeSelector:
		tags, err := parseTags(value)
		if err != nil {
			return bad("%v", err)
		}
		if name == ParamDiskSelector {
			p.DiskSelector = tags
		} else {
			p.NodeSelector = tags
		}
	case ParamEncrypted:
		on, err := strconv.ParseBool(value)
		if err != nil {
			return bad("want true or false")
		}
		if on {
			return bad("encryption at rest is not built into Drover's Kubernetes volumes yet (the Volume has no key field); use encrypted: false")
		}
	case ParamRecurringJobSelector:
		groups, err := parseJobSelector(value)
		if err != nil {
			return bad("%v", err)
		}
		p.Groups = groups
	default:
		if strings.HasPrefix(name, kubernetesParamPrefix) {
			return nil
		}
		return &ParamError{Name: name, Value: value, Reason: "unknown parameter (known: " + strings.Join(knownParams(), ", ") + ")"}
	}
	return nil
}

func knownParams() []string {
	return []string{ParamNumberOfReplicas, ParamStaleReplicaTimeout, ParamFromBackup, ParamDataLocality, ParamBackingImage,
		ParamFrontend, ParamDiskSelector, ParamNodeSelector, ParamEncrypted, ParamRecurringJobSelector}
}

// parseMinutes reads Longhorn's staleReplicaTimeout, an integer count of
// minutes ("2880"), or a Go duration ("30m", "48h").
func parseMinutes(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 1 || n > math.MaxInt64/int64(time.Minute) {
			return 0, fmt.Errorf("want a positive number of minutes")
		}
		return time.Duration(n) * time.Minute, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("want minutes (2880) or a duration (48h)")
	}
	return d, nil
}

// parseTags reads a comma-separated tag list ("ssd,fast").
func parseTags(s string) ([]string, error) {
	var tags []string
	seen := map[string]bool{}
	for _, t := range strings.Split(s, ",") {
		t = strings.TrimSpace(t)
		if t == "" {
			continue
		}
		if len(t) > 63 || strings.ContainsAny(t, " \t\"'") {
			return nil, fmt.Errorf("tag %q: at most 63 characters, no spaces or quotes", t)
		}
		if !seen[t] {
			seen[t] = true
			tags = append(tags, t)
		}
	}
	sort.Strings(tags)
	return tags, nil
}

// parseJobSelector reads Longhorn's recurringJobSelector, a JSON list of
// {"name": ..., "isGroup": ...}. Drover's RecurringJobs select volumes by
// group only, so every entry must be a group.
func parseJobSelector(s string) ([]string, error) {
	var sel []struct {
		Name    string `json:"name"`
		IsGroup bool   `json:"isGroup"`
	}
	if err := json.Unmarshal([]byte(s), &sel); err != nil {
		return nil, fmt.Errorf(`want a JSON list like [{"name":"daily","isGroup":true}]: %v`, err)
	}
	var groups []string
	for _, e := range sel {
		if !e.IsGroup {
			return nil, fmt.Errorf("job %q: Drover's RecurringJobs select volumes by group; give a group (isGroup true)", e.Name)
		}
		if errs := validation.IsValidLabelValue(e.Name); len(errs) > 0 || e.Name == "" {
			return nil, fmt.Errorf("group %q is not a valid label name", e.Name)
		}
		groups = append(groups, e.Name)
	}
	sort.Strings(groups)
	return groups, nil
}

// apply writes the parameters into a Volume about to be created.
func (p VolumeParams) apply(v *v1alpha1.Volume) {
	v.Spec.NumberOfReplicas = p.NumberOfReplicas
	v.Spec.StaleReplicaTimeout = p.StaleReplicaTimeout
	v.Spec.FromBackup = p.FromBackup
	v.Spec.DataLocality = p.DataLocality
	v.Spec.BackingImage = p.BackingImage
	v.Spec.Frontend = p.Frontend
	v.Spec.DiskSelector = p.DiskSelector
	v.Spec.NodeSelector = p.NodeSelector
	for _, g := range p.Groups {
		if v.Labels == nil {
			v.Labels = map[string]string{}
		}
		v.Labels[RecurringJobGroupLabelPrefix+g] = "enabled"
	}
}

// RoundSize turns a CSI capacity range into a volume size: the required
// bytes rounded up to 4 KiB (defaultBytes when neither bound is given,
// the limit when only it is), refused when it passes the limit.
func RoundSize(requiredBytes, limitBytes, defaultBytes int64) (int64, error) {
	if requiredBytes < 0 || limitBytes < 0 {
		return 0, fmt.Errorf("capacity range: negative bytes (required %d, limit %d)", requiredBytes, limitBytes)
	}
	size := requiredBytes
	if size == 0 {
		size = defaultBytes
		if limitBytes != 0 && limitBytes < size {
			size = limitBytes / v1alpha1.BlockSizeBytes * v1alpha1.BlockSizeBytes // within the limit
		}
	}
	if size > maxVolumeSizeBytes {
		return 0, fmt.Errorf("%w: %d bytes is more than the 1 PiB a volume may have", errTooLarge, size)
	}
	size = (size + v1alpha1.BlockSizeBytes - 1) / v1alpha1.BlockSizeBytes * v1alpha1.BlockSizeBytes
	if size == 0 {
		size = v1alpha1.BlockSizeBytes
	}
	if limitBytes != 0 && size > limitBytes {
		return 0, fmt.Errorf("capacity range: %d required bytes round up to %d (a multiple of 4 KiB), over the limit of %d", requiredBytes, size, limitBytes)
	}
	return size, nil
}

// Mutable parameters (a VolumeAttributesClass's): the volume's QoS,
// changed by ControllerModifyVolume while it is attached.
const (
	ParamMaxIOPS           = "maxIOPS"
	ParamMaxBandwidthBytes = "maxBandwidthBytes"
)

// ParseQoS reads mutable parameters into QoS limits over base (nil: none
// so far): each parameter given replaces its field, "0" removes that
// limit. maxBandwidthBytes is bytes a second, a plain integer or a
// Kubernetes quantity ("50Mi"). Anything else is a *ParamError.
func ParseQoS(params map[string]string, base *v1alpha1.VolumeQoS) (*v1alpha1.VolumeQoS, error) {
	q := v1alpha1.VolumeQoS{}
	if base != nil {
		q = *base
	}
	names := make([]string, 0, len(params))
	for k := range params {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, name := range names {
		value := params[name]
		switch name {
		case ParamMaxIOPS:
			n, err := strconv.ParseInt(strings.TrimSpace(value), 10, 64)
			if err != nil || n < 0 || n > 1<<40 {
				return nil, &ParamError{Name: name, Value: value, Reason: "want a count of IOs a second (0: no limit)"}
			}
			q.MaxIOPS = n
		case ParamMaxBandwidthBytes:
			qty, err := resource.ParseQuantity(strings.TrimSpace(value))
			n, ok := qty.AsInt64()
			if err != nil || !ok || n < 0 {
				return nil, &ParamError{Name: name, Value: value, Reason: "want bytes a second, like 52428800 or 50Mi (0: no limit)"}
			}
			q.MaxBandwidthBytes = n
		default:
			return nil, &ParamError{Name: name, Value: value, Reason: "unknown mutable parameter (known: maxIOPS, maxBandwidthBytes)"}
		}
	}
	if q == (v1alpha1.VolumeQoS{}) {
		return nil, nil
	}
	return &q, nil
}
