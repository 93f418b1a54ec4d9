package csi

import (
	"errors"
	"strings"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
)

func TestParseParamsSeed(t *testing.T) {
	// The seed's Longhorn-style class, with every parameter Drover reads.
	p, err := ParseParams(map[string]string{
		"numberOfReplicas": "3", "staleReplicaTimeout": "2880", "fromBackup": "vol1/backup-1",
		"dataLocality": "best-effort", "backingImage": "ubuntu", "frontend": "blockdev",
		"diskSelector": "ssd, fast,ssd", "nodeSelector": "storage", "encrypted": "false",
		"recurringJobSelector":        `[{"name":"daily","isGroup":true}]`,
		"csi.storage.k8s.io/pvc/name": "data", // added by the provisioner: ignored
	})
	if err != nil {
		t.Fatal(err)
	}
	if *p.NumberOfReplicas != 3 || p.StaleReplicaTimeout.Duration != 48*time.Hour || p.FromBackup != "vol1/backup-1" ||
		p.DataLocality != v1alpha1.DataLocalityBestEffort || p.BackingImage != "ubuntu" || p.Frontend != v1alpha1.FrontendNBD ||
		strings.Join(p.DiskSelector, ",") != "fast,ssd" || strings.Join(p.NodeSelector, ",") != "storage" ||
		strings.Join(p.Groups, ",") != "daily" {
		t.Errorf("parsed %+v", p)
	}
	var v v1alpha1.Volume
	p.apply(&v)
	if v.Labels[RecurringJobGroupLabelPrefix+"daily"] != "enabled" || *v.Spec.NumberOfReplicas != 3 {
		t.Errorf("applied %+v %v", v.Spec, v.Labels)
	}
	if d, _ := ParseParams(map[string]string{"staleReplicaTimeout": "30m"}); d.StaleReplicaTimeout.Duration != 30*time.Minute {
		t.Errorf("a Go duration: %v", d.StaleReplicaTimeout)
	}
}

func TestParseParamsBad(t *testing.T) {
	for _, tc := range []struct{ name, value, reason string }{
		{"numberOfReplica", "3", "unknown parameter"},
		{"numberOfReplicas", "0", "1 to 20"},
		{"numberOfReplicas", "21", "1 to 20"},
		{"numberOfReplicas", "3.5", "1 to 20"},
		{"numberOfReplicas", "", "1 to 20"},
		{"staleReplicaTimeout", "0", "positive"},
		{"staleReplicaTimeout", "-1h", "minutes"},
		{"staleReplicaTimeout", "99999999999999999", "positive"},
		{"staleReplicaTimeout", "soon", "minutes"},
		{"dataLocality", "local", "best-effort"},
		{"frontend", "ublk", "iscsi"},
		{"backingImage", "Not/A/Name", "BackingImage name"},
		{"diskSelector", "a b", "no spaces"},
		{"nodeSelector", strings.Repeat("x", 64), "63"},
		{"encrypted", "yes", "true or false"},
		{"encrypted", "true", "not built"},
		{"recurringJobSelector", "daily", "JSON list"},
		{"recurringJobSelector", `[{"name":"snap1","isGroup":false}]`, "by group"},
		{"recurringJobSelector", `[{"name":"","isGroup":true}]`, "label"},
		{"fromBackup", strings.Repeat("b", 1025), "1024"},
	} {
		_, err := ParseParams(map[string]string{tc.name: tc.value})
		var pe *ParamError
		if !errors.As(err, &pe) || pe.Name != tc.name || !strings.Contains(err.Error(), tc.reason) {
			t.Errorf("%s=%q: got %v, want a ParamError naming it with %q", tc.name, tc.value, err, tc.reason)
		}
	}
	_, err := ParseParams(map[string]string{"numberOfReplicas": "2", "dataLocality": "strict-local"})
	if err == nil || !strings.Contains(err.Error(), "numberOfReplicas 1") {
		t.Errorf("strict-local with 2 replicas: %v", err)
	}
}

func TestRoundSize(t *testing.T) {
	for _, tc := range []struct {
		required, limit, want int64
		err                   string
	}{
		{0, 0, 1 << 30, ""},
		{1, 0, 4096, ""},
		{4096, 0, 4096, ""},
		{4097, 0, 8192, ""},
		{5<<30 + 1, 0, 5<<30 + 4096, ""},
		{0, 1 << 20, 1 << 20, ""},   // only a limit, below the default
		{0, 1<<20 + 1, 1 << 20, ""}, // rounded up stays within it
		{4097, 8191, 0, "over the limit"},
		{-1, 0, 0, "negative"},
		{0, -1, 0, "negative"},
		{1<<50 + 1, 0, 0, "1 PiB"},
		{1<<63 - 1, 0, 0, "1 PiB"}, // no overflow in the rounding
	} {
		got, err := RoundSize(tc.required, tc.limit, 1<<30)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("RoundSize(%d, %d): %d, %v; want an error with %q", tc.required, tc.limit, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("RoundSize(%d, %d) = %d, %v; want %d", tc.required, tc.limit, got, err, tc.want)
		}
	}
}

func TestObjectName(t *testing.T) {
	if got := objectName("pvc-0a1b"); got != "pvc-0a1b" {
		t.Errorf("a valid name changed: %s", got)
	}
	long := strings.Repeat("a", 128)
	for _, n := range []string{long, "Upper", "with space", "a/b", "-x"} {
		got := objectName(n)
		if !strings.HasPrefix(got, "csi-") || len(got) > 63 || got == objectName(n+"x") {
			t.Errorf("objectName(%q) = %q", n, got)
		}
	}
}

// TestLockAborts: a second call on a volume another call holds gets
// Aborted at once; after release it proceeds.
func TestLockAborts(t *testing.T) {
	d := &Driver{busy: map[string]string{}}
	unlock, err := d.lock("v1", "NodeStageVolume")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.lock("v1", "NodeUnstageVolume"); status.Code(err) != codes.Aborted || !strings.Contains(err.Error(), "NodeStageVolume") {
		t.Errorf("second call: %v, want Aborted naming the first", err)
	}
	other, err := d.lock("v2", "NodeStageVolume")
	if err != nil {
		t.Errorf("another volume: %v", err)
	}
	other()
	unlock()
	again, err := d.lock("v1", "NodeUnstageVolume")
	if err != nil {
		t.Errorf("after release: %v", err)
	}
	again()
}

func TestCheckCaps(t *testing.T) {
	if err := checkCaps(nil); status.Code(err) != codes.InvalidArgument {
		t.Errorf("no capabilities: %v", err)
	}
	if err := checkCap(mountCapOf("btrfs", 1)); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "btrfs") {
		t.Errorf("btrfs: %v", err)
	}
	if err := checkCap(mountCapOf("", 5)); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "one node") {
		t.Errorf("multi-node writer: %v", err)
	}
	if err := checkCap(mountCapOf("xfs", 1)); err != nil {
		t.Errorf("xfs single-node writer: %v", err)
	}
}

func mountCapOf(fs string, mode int32) *csipb.VolumeCapability {
	return &csipb.VolumeCapability{AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{FsType: fs}},
		AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_Mode(mode)}}
}
