package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
	"github.com/drover-io/drover/k8s/k8stest"
	"github.com/drover-io/drover/transports/testenv"
)

// TestProcessK8sBackingImage runs the manager and three agents against a
// real kube-apiserver, with a BackingImage downloaded over HTTP from a
// server in the test: a 3-replica volume on it gets a copy on each of its
// replicas' disks (status ready, 100%, the file's SHA-256) before the
// replicas start, and reads the image through its engine's NBD export
// (nbdcopy); when one replica's agent is killed, the replacement on the
// fourth node gets its own copy before it starts and is rebuilt, and the
// volume still reads the image; an image named in spec.disks is copied to that disk with no
// volume; an image whose file does not match spec.checksum fails on the
// disk with the two checksums, and the replica on it waits with
// BackingImageReady=False saying so; once the volumes are gone, the
// copies are removed after the cleanup wait and their status entries go.
func TestProcessK8sBackingImage(t *testing.T) {
	testenv.NeedTools(t, "nbdcopy")
	c := startK8sCluster(t, 4)
	ctx := context.Background()
	c.setSetting(v1alpha1.SettingBackingImageCleanupWait, "2s")

	// An odd size: the stored copy pads the last block, the checksum is
	// the file's.
	image := make([]byte, 3<<20+1000)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range image {
		image[i] = byte(rng.Uint32())
	}
	clear(image[1<<20 : 2<<20]) // a hole
	sum := sha256.Sum256(image)
	imageSum := hex.EncodeToString(sum[:])
	var downloads atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		downloads.Add(1)
		http.ServeContent(w, r, "base.raw", time.Time{}, bytes.NewReader(image))
	}))
	t.Cleanup(srv.Close)

	create := func(name string, spec v1alpha1.BackingImageSpec) {
		img := &v1alpha1.BackingImage{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: k8stest.Namespace}, Spec: spec}
		if err := c.env.Client.Create(ctx, img); err != nil {
			t.Fatal(err)
		}
	}
	create("base", v1alpha1.BackingImageSpec{URL: srv.URL + "/base.raw", Checksum: imageSum})
	create("seeded", v1alpha1.BackingImageSpec{URL: srv.URL + "/seeded.raw", Disks: []string{"node-c/default"}})
	wrong := sha256.Sum256([]byte("another image"))
	create("bad", v1alpha1.BackingImageSpec{URL: srv.URL + "/bad.raw", Checksum: hex.EncodeToString(wrong[:])})
	getImage := func(name string) *v1alpha1.BackingImage {
		var img v1alpha1.BackingImage
		if err := c.env.Client.Get(ctx, client.ObjectKey{Namespace: k8stest.Namespace, Name: name}, &img); err != nil {
			t.Fatal(err)
		}
		return &img
	}
	copies := func(name string) string {
		img := getImage(name)
		var out []string
		for k, s := range img.Status.DiskFileStatus {
			out = append(out, fmt.Sprintf("%s:%s:%d", k, s.State, s.Progress))
		}
		sort.Strings(out)
		return strings.Join(out, " ")
	}

	eventually(t, "the seeded image copied to node-c with no volume", func() (bool, string) {
		got := copies("seeded")
		return got == "node-c/default:ready:100", got
	})

	three, one := int32(3), int32(1)
	const size = 8 << 20
	vol := &v1alpha1.Volume{ObjectMeta: metav1.ObjectMeta{Name: "onbase", Namespace: k8stest.Namespace},
		Spec: v1alpha1.VolumeSpec{Size: size, NumberOfReplicas: &three, BackingImage: "base",
			StaleReplicaTimeout: &metav1.Duration{Duration: 3 * time.Second}}}
	created := time.Now()
	if err := c.env.Client.Create(ctx, vol); err != nil {
		t.Fatal(err)
	}
	var nodes []string
	eventually(t, "three replicas running on their disks' ready copies", func() (bool, string) {
		nodes = nil
		var state []string
		for _, r := range c.replicas("onbase") {
			cond := meta.FindStatusCondition(r.Status.Conditions, v1alpha1.ReplicaConditionBackingImageReady)
			if r.Status.CurrentState == v1alpha1.InstanceRunning && cond != nil && cond.Status == metav1.ConditionTrue {
				nodes = append(nodes, r.Spec.NodeID)
			}
			state = append(state, fmt.Sprintf("%s:%s:%+v", r.Spec.NodeID, r.Status.CurrentState, cond))
		}
		sort.Strings(nodes)
		return len(nodes) == 3, strings.Join(state, " ") + " copies " + copies("base")
	})
	t.Logf("volume on a %d-byte backing image created -> 3 replicas running: %v", len(image), time.Since(created).Round(time.Millisecond))
	img := getImage("base")
	for _, n := range nodes {
		fs := img.Status.DiskFileStatus[n+"/default"]
		if fs.State != v1alpha1.BackingImageReady || fs.Progress != 100 || fs.Checksum != imageSum {
			t.Errorf("copy on %s: %+v, want ready 100%% with sha256 %s", n, fs, imageSum)
		}
	}
	if img.Status.Checksum != imageSum || img.Status.Size != 3<<20+4096 {
		t.Errorf("image status: size %d checksum %s, want %d and %s", img.Status.Size, img.Status.Checksum, 3<<20+4096, imageSum)
	}

	c.patchVolume("onbase", func(v *v1alpha1.Volume) { v.Spec.NodeID = nodes[0] })
	var endpoint string
	eventually(t, "attached and healthy", func() (bool, string) {
		v := c.volume("onbase")
		endpoint = v.Status.Endpoint
		return v.Status.State == v1alpha1.VolumeAttached && v.Status.Robustness == v1alpha1.RobustnessHealthy && endpoint != "",
			fmt.Sprintf("%s %s %v", v.Status.State, v.Status.Robustness, c.replicaNodes("onbase"))
	})
	readsImage := func(when string) {
		back := filepath.Join(t.TempDir(), "back.bin")
		if out, err := exec.Command("nbdcopy", endpoint, back).CombinedOutput(); err != nil {
			t.Fatalf("%s: nbdcopy from the volume: %v\n%s", when, err, out)
		}
		got, err := os.ReadFile(back)
		if err != nil {
			t.Fatal(err)
		}
		want := append(append([]byte{}, image...), make([]byte, size-len(image))...)
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: the volume does not read the image: %d bytes, first difference at %d", when, len(got), firstDiff(got, want))
		}
	}
	readsImage("attached")

	// The agent of the replica away from the engine is killed: the
	// replacement on the fourth node gets its own copy first, is rebuilt
	// and the volume still reads the image.
	victim, spare := nodes[2], ""
	for n := range c.agents {
		if n != nodes[0] && n != nodes[1] && n != nodes[2] {
			spare = n
		}
	}
	killed := time.Now()
	c.agents[victim].kill()
	eventually(t, "a replacement RW on "+spare+" on its own copy", func() (bool, string) {
		got := c.replicaNodes("onbase")
		want := []string{nodes[0] + ":running:RW", nodes[1] + ":running:RW", spare + ":running:RW"}
		sort.Strings(want)
		fs := getImage("base").Status.DiskFileStatus[spare+"/default"]
		return strings.Join(got, " ") == strings.Join(want, " ") && fs.State == v1alpha1.BackingImageReady, fmt.Sprint(got, " ", fs)
	})
	t.Logf("agent killed -> replacement on its own copy RW: %v", time.Since(killed).Round(time.Millisecond))
	readsImage("after the replacement")
	c.startAgent(victim, int(victim[len(victim)-1]-'a'))

	// A file that does not match its checksum is never used.
	bad := &v1alpha1.Volume{ObjectMeta: metav1.ObjectMeta{Name: "onbad", Namespace: k8stest.Namespace},
		Spec: v1alpha1.VolumeSpec{Size: size, NumberOfReplicas: &one, BackingImage: "bad"}}
	if err := c.env.Client.Create(ctx, bad); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the bad image's copy failed and its replica waits saying why", func() (bool, string) {
		reps := c.replicas("onbad")
		if len(reps) != 1 {
			return false, fmt.Sprint(len(reps), " replicas")
		}
		r := reps[0]
		cond := meta.FindStatusCondition(r.Status.Conditions, v1alpha1.ReplicaConditionBackingImageReady)
		fs := getImage("bad").Status.DiskFileStatus[r.Spec.NodeID+"/default"]
		return cond != nil && cond.Status == metav1.ConditionFalse && cond.Reason == "CopyFailed" &&
				strings.Contains(cond.Message, "has SHA-256 "+imageSum+", spec.checksum says "+hex.EncodeToString(wrong[:])) &&
				fs.State == v1alpha1.BackingImageFailed && r.Status.CurrentState != v1alpha1.InstanceRunning,
			fmt.Sprintf("%s %+v %+v", r.Status.CurrentState, cond, fs)
	})
	eventually(t, "the volume says why it waits", func() (bool, string) {
		cond := meta.FindStatusCondition(c.volume("onbad").Status.Conditions, v1alpha1.VolumeConditionBackingImageReady)
		return cond != nil && cond.Status == metav1.ConditionFalse && cond.Reason == "CopyFailed" &&
			strings.Contains(cond.Message, "spec.checksum says"), fmt.Sprintf("%+v", cond)
	})

	// The volumes gone, the copies go after the cleanup wait.
	c.patchVolume("onbase", func(v *v1alpha1.Volume) { v.Spec.NodeID = "" })
	for _, name := range []string{"onbase", "onbad"} {
		if err := c.env.Client.Delete(ctx, c.volume(name)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "the unused copies removed", func() (bool, string) {
		var left []string
		for node, disk := range c.disks {
			for _, name := range []string{"base", "bad"} {
				if _, err := os.Stat(filepath.Join(disk, "backing-images", name)); err == nil {
					left = append(left, node+"/"+name)
				}
			}
		}
		return len(left) == 0 && copies("base") == "" && copies("bad") == "", fmt.Sprintf("on disk %v, status %q %q", left, copies("base"), copies("bad"))
	})
	if got := copies("seeded"); got != "node-c/default:ready:100" {
		t.Errorf("the seeded copy, which spec.disks asks for: %s", got)
	}
	t.Logf("%d downloads", downloads.Load())
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
