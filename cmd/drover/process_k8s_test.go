package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
	"github.com/drover-io/drover/k8s/k8stest"
	"github.com/drover-io/drover/transports/backuprun"
	"github.com/drover-io/drover/transports/objstore"
	"github.com/drover-io/drover/transports/testenv"
)

// k8sCluster is a real API server with a drover manager and agents as
// processes, each agent a "node" on its own loopback address and data dir.
type k8sCluster struct {
	t       *testing.T
	env     *k8stest.Env
	manager *proc
	agents  map[string]*proc
	disks   map[string]string
}

func startK8sCluster(t *testing.T, nodes int) *k8sCluster {
	env := k8stest.Start(t)
	c := &k8sCluster{t: t, env: env, agents: map[string]*proc{}, disks: map[string]string{}}
	// Short timeouts so a killed agent's node goes down, and its replica
	// stale, within seconds.
	c.setSetting(v1alpha1.SettingNodeDownGracePeriod, "3s")
	// Every "node" shares this machine's disk, which other work fills:
	// the free-space floor is not what these tests are about.
	c.setSetting(v1alpha1.SettingStorageMinimalAvailablePct, "0")
	c.manager = start(t, "manager", nil, "manager", "--kubeconfig", env.Kubeconfig, "--namespace", k8stest.Namespace,
		"--leader-elect=false", "--resync", "1s")
	for i := range nodes {
		name := fmt.Sprintf("node-%c", 'a'+i)
		c.disks[name] = filepath.Join(t.TempDir(), "disk")
		c.startAgent(name, i)
	}
	return c
}

func (c *k8sCluster) startAgent(name string, i int) {
	c.agents[name] = start(c.t, name, nil, "agent", "--kubeconfig", c.env.Kubeconfig, "--namespace", k8stest.Namespace,
		"--node", name, "--address", fmt.Sprintf("127.0.0.%d", 2+i), "--disk", "default="+c.disks[name], "--heartbeat", "500ms")
}

func (c *k8sCluster) setSetting(name, value string) {
	s := &v1alpha1.Setting{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: k8stest.Namespace}, Value: value}
	if err := c.env.Client.Create(context.Background(), s); err != nil {
		c.t.Fatalf("setting %s: %v", name, err)
	}
}

func (c *k8sCluster) volume(name string) *v1alpha1.Volume {
	var v v1alpha1.Volume
	if err := c.env.Client.Get(context.Background(), types.NamespacedName{Namespace: k8stest.Namespace, Name: name}, &v); err != nil {
		c.t.Fatalf("get volume %s: %v", name, err)
	}
	return &v
}

func (c *k8sCluster) replicas(vol string) []v1alpha1.Replica {
	var list v1alpha1.ReplicaList
	if err := c.env.Client.List(context.Background(), &list, client.InNamespace(k8stest.Namespace),
		client.MatchingLabels{v1alpha1.LabelVolume: vol}); err != nil {
		c.t.Fatalf("list replicas: %v", err)
	}
	return list.Items
}

// replicaNodes describes a volume's replicas: node:state:mode, sorted.
func (c *k8sCluster) replicaNodes(vol string) []string {
	var eng v1alpha1.Engine
	_ = c.env.Client.Get(context.Background(), types.NamespacedName{Namespace: k8stest.Namespace, Name: vol}, &eng)
	var out []string
	for _, r := range c.replicas(vol) {
		out = append(out, fmt.Sprintf("%s:%s:%s", r.Spec.NodeID, r.Status.CurrentState, eng.Status.ReplicaModeMap[r.Name]))
	}
	sort.Strings(out)
	return out
}

// replicaNames lists a volume's Replica names, sorted.
func (c *k8sCluster) replicaNames(vol string) []string {
	var out []string
	for _, r := range c.replicas(vol) {
		out = append(out, r.Name)
	}
	sort.Strings(out)
	return out
}

// snapshots lists a volume's Snapshot objects as name:ready|pending.
func (c *k8sCluster) snapshots(vol string) []string {
	var list v1alpha1.SnapshotList
	if err := c.env.Client.List(context.Background(), &list, client.InNamespace(k8stest.Namespace),
		client.MatchingLabels{v1alpha1.LabelVolume: vol}); err != nil {
		c.t.Fatalf("list snapshots: %v", err)
	}
	var out []string
	for _, s := range list.Items {
		state := "pending"
		if s.Status.ReadyToUse {
			state = "ready"
		}
		if !s.DeletionTimestamp.IsZero() {
			state = "deleting"
		}
		out = append(out, s.Name+":"+state)
	}
	sort.Strings(out)
	return out
}

func (c *k8sCluster) patchVolume(name string, fn func(*v1alpha1.Volume)) {
	v := c.volume(name)
	patch := client.MergeFrom(v.DeepCopy())
	fn(v)
	if err := c.env.Client.Patch(context.Background(), v, patch); err != nil {
		c.t.Fatalf("patch volume %s: %v", name, err)
	}
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// TestProcessK8sVolumeLifecycle runs the manager and four agents against
// a real kube-apiserver: a 3-replica Volume is scheduled on three nodes,
// attached, written through its NBD endpoint with nbdcopy; one replica's
// agent is killed -9, and after the stale replica timeout a replacement
// is scheduled on the fourth node and rebuilt; the data reads back the
// same; detach and delete leave no replica data on any disk.
func TestProcessK8sVolumeLifecycle(t *testing.T) {
	testenv.NeedTools(t, "nbdcopy", "nbdinfo")
	c := startK8sCluster(t, 4)
	ctx := context.Background()
	size := int64(64 << 20)
	if env := os.Getenv("DROVER_K8S_E2E_SIZE"); env != "" { // e.g. 1073741824 for the numbers
		n, err := strconv.ParseInt(env, 10, 64)
		if err != nil {
			t.Fatalf("DROVER_K8S_E2E_SIZE: %v", err)
		}
		size = n
	}
	three := int32(3)
	vol := &v1alpha1.Volume{ObjectMeta: metav1.ObjectMeta{Name: "vol1", Namespace: k8stest.Namespace},
		Spec: v1alpha1.VolumeSpec{Size: size, NumberOfReplicas: &three,
			StaleReplicaTimeout: &metav1.Duration{Duration: 3 * time.Second}}}
	created := time.Now()
	if err := c.env.Client.Create(ctx, vol); err != nil {
		t.Fatal(err)
	}
	var placed []string // the replicas' nodes
	eventually(t, "three replicas running on three nodes", func() (bool, string) {
		got := c.replicaNodes("vol1")
		placed = nil
		for _, r := range got {
			node, state, _ := strings.Cut(r, ":")
			if state == "running:" && (len(placed) == 0 || placed[len(placed)-1] != node) {
				placed = append(placed, node)
			}
		}
		return len(placed) == 3 && len(got) == 3, fmt.Sprint(got)
	})
	attachTo, victim, spare := placed[0], placed[2], ""
	for node := range c.agents {
		if !strings.Contains(strings.Join(placed, " "), node) {
			spare = node
		}
	}
	t.Logf("volume created -> 3 replicas running: %v", time.Since(created).Round(time.Millisecond))

	attach := time.Now()
	c.patchVolume("vol1", func(v *v1alpha1.Volume) { v.Spec.NodeID = attachTo })
	var endpoint string
	eventually(t, "attached and healthy", func() (bool, string) {
		v := c.volume("vol1")
		endpoint = v.Status.Endpoint
		return v.Status.State == v1alpha1.VolumeAttached && v.Status.Robustness == v1alpha1.RobustnessHealthy && endpoint != "",
			fmt.Sprintf("%s %s %v", v.Status.State, v.Status.Robustness, c.replicaNodes("vol1"))
	})
	t.Logf("attach -> 3 replicas RW: %v (endpoint %s)", time.Since(attach).Round(time.Millisecond), endpoint)
	// The replica on the engine's node is reached in-process.
	if out := c.agents[attachTo].output(); !strings.Contains(out, "replica reached over the in-process link") {
		t.Errorf("the engine on %s did not reach its local replica in-process:\n%s", attachTo, out)
	}

	dir := t.TempDir()
	data := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	in := filepath.Join(dir, "in.bin")
	if err := os.WriteFile(in, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("nbdcopy", in, endpoint).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy to the volume: %v\n%s", err, out)
	}

	// A recurring snapshot job with retain 2 runs every second and keeps
	// the newest two snapshots of the volume.
	job := &v1alpha1.RecurringJob{ObjectMeta: metav1.ObjectMeta{Name: "snap", Namespace: k8stest.Namespace},
		Spec: v1alpha1.RecurringJobSpec{Task: v1alpha1.RecurringJobSnapshot, Cron: "@every 1s", Retain: 2, Groups: []string{"default"}}}
	if err := c.env.Client.Create(ctx, job); err != nil {
		t.Fatal(err)
	}
	eventually(t, "four runs of the job, two snapshots kept", func() (bool, string) {
		if err := c.env.Client.Get(ctx, client.ObjectKeyFromObject(job), job); err != nil {
			return false, err.Error()
		}
		snaps := c.snapshots("vol1")
		return job.Status.ExecutionCount >= 4 && len(snaps) == 2 && strings.Count(strings.Join(snaps, " "), ":ready") == 2,
			fmt.Sprintf("runs %d, snapshots %v", job.Status.ExecutionCount, snaps)
	})
	if err := c.env.Client.Delete(ctx, job); err != nil {
		t.Fatal(err)
	}

	// A backup of the volume to a directory target.
	bt := &v1alpha1.BackupTarget{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: k8stest.Namespace},
		Spec: v1alpha1.BackupTargetSpec{URL: t.TempDir()}}
	if err := c.env.Client.Create(ctx, bt); err != nil {
		t.Fatal(err)
	}
	bk := &v1alpha1.Backup{ObjectMeta: metav1.ObjectMeta{Name: "b1", Namespace: k8stest.Namespace},
		Spec: v1alpha1.BackupSpec{Volume: "vol1"}}
	if err := c.env.Client.Create(ctx, bk); err != nil {
		t.Fatal(err)
	}
	backedUp := time.Now()
	eventually(t, "the backup completed", func() (bool, string) {
		if err := c.env.Client.Get(ctx, client.ObjectKeyFromObject(bk), bk); err != nil {
			return false, err.Error()
		}
		return bk.Status.State == v1alpha1.BackupCompleted && bk.Status.URL != "", fmt.Sprintf("%+v", bk.Status)
	})
	t.Logf("backup of %d MiB: %v (%s)", size>>20, time.Since(backedUp).Round(time.Millisecond), bk.Status.URL)

	// A recurring backup job with retain 1: after three runs the target
	// holds b1 and the job's newest backup, nothing more.
	bjob := &v1alpha1.RecurringJob{ObjectMeta: metav1.ObjectMeta{Name: "bk", Namespace: k8stest.Namespace},
		Spec: v1alpha1.RecurringJobSpec{Task: v1alpha1.RecurringJobBackup, Cron: "@every 2s", Retain: 1, Groups: []string{"default"}}}
	if err := c.env.Client.Create(ctx, bjob); err != nil {
		t.Fatal(err)
	}
	eventually(t, "three runs of the backup job", func() (bool, string) {
		if err := c.env.Client.Get(ctx, client.ObjectKeyFromObject(bjob), bjob); err != nil {
			return false, err.Error()
		}
		return bjob.Status.ExecutionCount >= 3, fmt.Sprint(bjob.Status.ExecutionCount)
	})
	if err := c.env.Client.Delete(ctx, bjob); err != nil {
		t.Fatal(err)
	}
	store, err := objstore.OpenDir(bt.Spec.URL)
	if err != nil {
		t.Fatal(err)
	}
	repo := backuprun.NewRepo(store)
	eventually(t, "one backup of the job kept, in the cluster and in the target", func() (bool, string) {
		var list v1alpha1.BackupList
		if err := c.env.Client.List(ctx, &list, client.InNamespace(k8stest.Namespace),
			client.MatchingLabels{v1alpha1.LabelRecurringJob: "bk"}); err != nil {
			return false, err.Error()
		}
		refs, err := repo.List(ctx, "vol1")
		if err != nil {
			return false, err.Error()
		}
		var states []string
		for _, b := range list.Items {
			states = append(states, string(b.Status.State))
		}
		return len(list.Items) == 1 && list.Items[0].Status.State == v1alpha1.BackupCompleted && len(refs) == 2,
			fmt.Sprintf("job backups %v, target %v", states, refs)
	})

	killed := time.Now()
	c.agents[victim].kill()
	eventually(t, "a replacement replica RW on "+spare, func() (bool, string) {
		got := c.replicaNodes("vol1")
		want := []string{placed[0] + ":running:RW", placed[1] + ":running:RW", spare + ":running:RW"}
		sort.Strings(want)
		cond := meta.FindStatusCondition(c.volume("vol1").Status.Conditions, v1alpha1.VolumeConditionScheduled)
		return strings.Join(got, " ") == strings.Join(want, " "), fmt.Sprintf("%v %+v", got, cond)
	})
	t.Logf("agent killed -> replacement RW: %v", time.Since(killed).Round(time.Millisecond))

	back := filepath.Join(dir, "back.bin")
	if out, err := exec.Command("nbdcopy", endpoint, back).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy from the volume: %v\n%s", err, out)
	}
	if got, want := sha256File(t, back), sha256File(t, in); got != want {
		t.Fatalf("data read back differs: %s, wrote %s", got, want)
	}

	// A volume restored from the backup holds the same bytes.
	restored := time.Now()
	two := int32(2)
	vol2 := &v1alpha1.Volume{ObjectMeta: metav1.ObjectMeta{Name: "vol2", Namespace: k8stest.Namespace},
		Spec: v1alpha1.VolumeSpec{Size: size, NumberOfReplicas: &two, FromBackup: bk.Status.URL, NodeID: attachTo}}
	if err := c.env.Client.Create(ctx, vol2); err != nil {
		t.Fatal(err)
	}
	var endpoint2 string
	eventually(t, "vol2 restored and attached", func() (bool, string) {
		v := c.volume("vol2")
		endpoint2 = v.Status.Endpoint
		return v.Status.State == v1alpha1.VolumeAttached && meta.IsStatusConditionTrue(v.Status.Conditions, v1alpha1.VolumeConditionRestored) &&
			endpoint2 != "", fmt.Sprintf("%s %v", v.Status.State, v.Status.Conditions)
	})
	t.Logf("restore of %d MiB into a new 2-replica volume, created -> attached: %v", size>>20, time.Since(restored).Round(time.Millisecond))
	back2 := filepath.Join(dir, "back2.bin")
	if out, err := exec.Command("nbdcopy", endpoint2, back2).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy from vol2: %v\n%s", err, out)
	}
	if got, want := sha256File(t, back2), sha256File(t, in); got != want {
		t.Fatalf("restored volume holds %s, the backed-up one %s", got, want)
	}
	if err := c.env.Client.Delete(ctx, c.volume("vol2")); err != nil {
		t.Fatal(err)
	}

	// best-effort data locality: a 2-replica volume attached to a node
	// holding neither replica gains one there, and then drops another.
	vol3 := &v1alpha1.Volume{ObjectMeta: metav1.ObjectMeta{Name: "vol3", Namespace: k8stest.Namespace},
		Spec: v1alpha1.VolumeSpec{Size: 16 << 20, NumberOfReplicas: &two, DataLocality: v1alpha1.DataLocalityBestEffort}}
	if err := c.env.Client.Create(ctx, vol3); err != nil {
		t.Fatal(err)
	}
	var local string
	eventually(t, "vol3's two replicas running", func() (bool, string) {
		got := c.replicaNodes("vol3")
		if len(got) != 2 || strings.Count(strings.Join(got, " "), ":running:") != 2 {
			return false, fmt.Sprint(got)
		}
		for _, n := range []string{placed[0], placed[1], spare} { // the nodes whose agents run
			if !strings.Contains(strings.Join(got, " "), n+":") {
				local = n
			}
		}
		return local != "", fmt.Sprint(got)
	})
	c.patchVolume("vol3", func(v *v1alpha1.Volume) { v.Spec.NodeID = local })
	eventually(t, "vol3's data moved beside its engine on "+local, func() (bool, string) {
		got := c.replicaNodes("vol3")
		return len(got) == 2 && strings.Contains(strings.Join(got, " "), local+":running:RW") &&
			strings.Count(strings.Join(got, " "), ":running:RW") == 2, fmt.Sprint(got)
	})
	// Online expansion: the NBD export grows with the volume's spec.
	c.patchVolume("vol3", func(v *v1alpha1.Volume) { v.Spec.Size = 32 << 20 })
	eventually(t, "vol3 grown to 32 MiB", func() (bool, string) {
		ep := c.volume("vol3").Status.Endpoint
		out, err := exec.Command("nbdinfo", "--size", ep).CombinedOutput()
		return err == nil && strings.TrimSpace(string(out)) == fmt.Sprint(32<<20), fmt.Sprintf("%s %v %s", ep, err, out)
	})
	if err := c.env.Client.Delete(ctx, c.volume("vol3")); err != nil {
		t.Fatal(err)
	}

	// An agent that crashes and comes back within the stale replica
	// timeout gets its replica back into the volume (caught up, not
	// replaced): same replica names, all RW.
	before := c.replicaNames("vol1")
	c.patchVolume("vol1", func(v *v1alpha1.Volume) { v.Spec.StaleReplicaTimeout = &metav1.Duration{Duration: time.Hour} })
	restarted := placed[1]
	c.agents[restarted].kill()
	c.startAgent(restarted, int(restarted[len(restarted)-1]-'a'))
	eventually(t, "the restarted agent's replica RW again", func() (bool, string) {
		got := c.replicaNodes("vol1")
		return strings.Count(strings.Join(got, " "), ":running:RW") == 3 && strings.Join(c.replicaNames("vol1"), " ") == strings.Join(before, " "),
			fmt.Sprint(got, c.replicaNames("vol1"))
	})

	c.patchVolume("vol1", func(v *v1alpha1.Volume) { v.Spec.NodeID = "" })
	eventually(t, "detached", func() (bool, string) {
		v := c.volume("vol1")
		return v.Status.State == v1alpha1.VolumeDetached, string(v.Status.State)
	})
	// Every replica, the rebuilt one too, holds exactly what was written:
	// stop the agents and read each replica's directory.
	for _, rep := range c.replicas("vol1") {
		c.agents[rep.Spec.NodeID].stop()
		dir := filepath.Join(rep.Spec.DiskPath, "replicas", rep.Name)
		sum := strings.Fields(runDrover(t, "replica", "checksum", "--dir", dir))[0]
		if want := sha256File(t, in); sum != want {
			t.Errorf("replica %s on %s holds %s, wrote %s", rep.Name, rep.Spec.NodeID, sum, want)
		}
		c.startAgent(rep.Spec.NodeID, int(rep.Spec.NodeID[len(rep.Spec.NodeID)-1]-'a'))
	}
	// The killed node comes back: its agent removes the data of the
	// replica that was replaced while it was down.
	c.startAgent(victim, int(victim[len(victim)-1]-'a'))
	if err := c.env.Client.Delete(ctx, c.volume("vol1")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "volume and replicas gone", func() (bool, string) {
		var v v1alpha1.Volume
		err := c.env.Client.Get(ctx, types.NamespacedName{Namespace: k8stest.Namespace, Name: "vol1"}, &v)
		return client.IgnoreNotFound(err) == nil && err != nil && len(c.replicas("vol1")) == 0, fmt.Sprint(c.replicaNodes("vol1"))
	})
	eventually(t, "no replica data on any disk", func() (bool, string) {
		var left []string
		for node, disk := range c.disks {
			entries, _ := os.ReadDir(filepath.Join(disk, "replicas"))
			for _, e := range entries {
				left = append(left, node+"/"+e.Name())
			}
		}
		return len(left) == 0, fmt.Sprint(left)
	})
}
