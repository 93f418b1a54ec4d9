package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
	"github.com/drover-io/drover/k8s/k8stest"
	"github.com/drover-io/drover/k8s/volumekey"
	"github.com/drover-io/drover/transports/testenv"
)

// TestProcessK8sEncryptedVolume: a Volume naming a key Secret is served
// through the agent's engine encrypted: a pattern written through its NBD
// endpoint reads back, and no replica file on any node's disk holds it.
// The volume records the key's check; once the Secret's key is changed,
// the next attach is refused with a reason naming the secret, and the
// right key serves the data again.
func TestProcessK8sEncryptedVolume(t *testing.T) {
	testenv.NeedTools(t, "nbdcopy")
	c := startK8sCluster(t, 2)
	ctx := context.Background()
	keyHex := func(b byte) []byte { return []byte(hex.EncodeToString(bytes.Repeat([]byte{b}, 64))) }
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "vol-key", Namespace: k8stest.Namespace},
		Data: map[string][]byte{volumekey.KeyField: keyHex(0x11)}}
	if err := c.env.Client.Create(ctx, sec); err != nil {
		t.Fatal(err)
	}
	two := int32(2)
	size := int64(8 << 20)
	vol := &v1alpha1.Volume{ObjectMeta: metav1.ObjectMeta{Name: "cvol", Namespace: k8stest.Namespace},
		Spec: v1alpha1.VolumeSpec{Size: size, NumberOfReplicas: &two, EncryptionKeySecret: "vol-key"}}
	if err := c.env.Client.Create(ctx, vol); err != nil {
		t.Fatal(err)
	}
	attach := func(node string) string {
		t.Helper()
		c.patchVolume("cvol", func(v *v1alpha1.Volume) { v.Spec.NodeID = node })
		var endpoint string
		eventually(t, "attached", func() (bool, string) {
			v := c.volume("cvol")
			endpoint = v.Status.Endpoint
			return v.Status.State == v1alpha1.VolumeAttached && endpoint != "", fmt.Sprintf("%s %v %v", v.Status.State, v.Status.Conditions, c.replicaNodes("cvol"))
		})
		return endpoint
	}
	detach := func() {
		t.Helper()
		c.patchVolume("cvol", func(v *v1alpha1.Volume) { v.Spec.NodeID = "" })
		eventually(t, "detached", func() (bool, string) {
			v := c.volume("cvol")
			return v.Status.State == v1alpha1.VolumeDetached, string(v.Status.State)
		})
	}
	eventually(t, "two replicas running", func() (bool, string) {
		got := c.replicaNodes("cvol")
		return len(got) == 2 && strings.Count(strings.Join(got, " "), "running") == 2, fmt.Sprint(got)
	})
	endpoint := attach("node-a")
	if c.volume("cvol").Status.EncryptionKeyCheck == "" {
		t.Fatal("the volume recorded no key check")
	}
	pattern := bytes.Repeat([]byte("DROVER-PLAINTEXT-PATTERN-"), int(size)/25+1)[:size]
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in"), filepath.Join(dir, "out")
	if err := os.WriteFile(in, pattern, 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command("nbdcopy", in, endpoint).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy to the volume: %v\n%s", err, b)
	}
	if b, err := exec.Command("nbdcopy", endpoint, out).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy from the volume: %v\n%s", err, b)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, pattern) {
		t.Fatal("the encrypted volume did not read back what was written")
	}
	detach()
	files := 0
	for node, disk := range c.disks {
		filepath.WalkDir(disk, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return nil
			}
			b, _ := os.ReadFile(path)
			files++
			if bytes.Contains(b, []byte("DROVER-PLAINTEXT-PATTERN")) {
				t.Errorf("%s's %s holds the plaintext", node, path)
			}
			return nil
		})
	}
	if files == 0 {
		t.Fatal("no replica files found to check")
	}

	// Another key in the Secret: refused at the next attach, by name.
	sec.Data[volumekey.KeyField] = keyHex(0x22)
	if err := c.env.Client.Update(ctx, sec); err != nil {
		t.Fatal(err)
	}
	c.patchVolume("cvol", func(v *v1alpha1.Volume) { v.Spec.NodeID = "node-b" })
	eventually(t, "the attach refused for the wrong key", func() (bool, string) {
		v := c.volume("cvol")
		cond := meta.FindStatusCondition(v.Status.Conditions, v1alpha1.VolumeConditionAttachable)
		return cond != nil && cond.Reason == "EncryptionKey" && strings.Contains(cond.Message, "vol-key") && v.Status.State != v1alpha1.VolumeAttached,
			fmt.Sprintf("%s %+v", v.Status.State, cond)
	})
	sec.Data[volumekey.KeyField] = keyHex(0x11)
	if err := c.env.Client.Update(ctx, sec); err != nil {
		t.Fatal(err)
	}
	var v v1alpha1.Volume
	_ = c.env.Client.Get(ctx, client.ObjectKey{Namespace: k8stest.Namespace, Name: "cvol"}, &v)
	endpoint = attach("node-b")
	if b, err := exec.Command("nbdcopy", endpoint, out).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy from the volume: %v\n%s", err, b)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, pattern) {
		t.Fatal("with its key back, the volume did not read back what was written")
	}
}
