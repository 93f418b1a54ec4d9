package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/drover-io/drover/core/replica"
	"github.com/drover-io/drover/k8s/api/v1alpha1"
	"github.com/drover-io/drover/transports/backingimage"
)

// Backing images on a node: each of the agent's disks keeps its copies in
// <disk>/backing-images (a transports/backingimage store), so a replica's
// directory on that disk links its copy's layer. The agent copies an image
// to a disk when a Replica of its node on that disk names the image, or
// the image's spec.disks names the disk, and reports each copy in the
// BackingImage's status.diskFileStatus["node/disk"]: pending,
// in-progress with a percentage, ready, or failed with why. A copy is
// downloaded from spec.url (or imported from spec.sourcePath on the
// node), its SHA-256 checked against spec.checksum before it is stored;
// a replica on the image starts only once its disk's copy is ready. A
// copy nothing on its disk uses is removed after the
// backing-image-cleanup-wait-interval Setting (status.unusedSince says
// since when, so an agent restart does not reset the wait).

// imagesDir is where a disk keeps its backing image copies.
func imagesDir(diskPath string) string { return filepath.Join(diskPath, "backing-images") }

// sourceSumFile holds, in a copy's directory, the SHA-256 of the file the
// copy was made from (the store's own checksum is of the 4 KiB-padded
// content).
const sourceSumFile = "source.sha256"

// copyRetry is how long a failed copy waits before it is tried again.
const copyRetry = 30 * time.Second

// imageCopies are the copies being made, by "image/disk".
type imageCopies struct {
	mu      sync.Mutex
	running map[string]bool
	failed  map[string]time.Time // when the last attempt failed
}

func (c *imageCopies) start(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running == nil {
		c.running, c.failed = map[string]bool{}, map[string]time.Time{}
	}
	if c.running[key] {
		return false
	}
	if at, ok := c.failed[key]; ok && time.Since(at) < copyRetry {
		return false
	}
	c.running[key] = true
	return true
}

func (c *imageCopies) done(key string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.running, key)
	if err != nil {
		c.failed[key] = time.Now()
	} else {
		delete(c.failed, key)
	}
}

type backingImageReconciler struct {
	a      *Agent
	copies imageCopies
	// ctx lives as long as the agent (cancelled when its manager stops);
	// copies run in it, not in one reconcile's.
	ctx context.Context
}

func (br *backingImageReconciler) setup(mgr ctrl.Manager) error {
	// A replica of this node that names an image brings the image back.
	byReplica := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, obj client.Object) []reconcile.Request {
		rep, ok := obj.(*v1alpha1.Replica)
		if !ok || rep.Spec.BackingImage == "" {
			return nil
		}
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: rep.Namespace, Name: rep.Spec.BackingImage}}}
	})
	ctx, cancel := context.WithCancel(context.Background())
	br.ctx = ctx
	if err := mgr.Add(cancelOnStop(cancel)); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).Named("backingimage").For(&v1alpha1.BackingImage{}).
		Watches(&v1alpha1.Replica{}, byReplica).Complete(br)
}

// cancelOnStop calls its function when the manager stops.
type cancelOnStop context.CancelFunc

func (c cancelOnStop) Start(ctx context.Context) error {
	<-ctx.Done()
	c()
	return nil
}

func (cancelOnStop) NeedLeaderElection() bool { return false }

func (br *backingImageReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	a := br.a
	var img v1alpha1.BackingImage
	if err := a.client.Get(ctx, req.NamespacedName, &img); err != nil {
		if client.IgnoreNotFound(err) != nil {
			return ctrl.Result{}, err
		}
		// The image is gone: remove the copies nothing uses.
		return ctrl.Result{}, br.removeCopies(req.Name)
	}
	used, err := br.usedOn(ctx, &img)
	if err != nil {
		return ctrl.Result{}, err
	}
	grace, err := br.cleanupWait(ctx)
	if err != nil {
		return ctrl.Result{}, err
	}
	var next time.Duration
	for _, disk := range sortedKeys(a.cfg.Disks) {
		wait, err := br.reconcileDisk(ctx, &img, disk, used[disk], grace)
		if err != nil {
			return ctrl.Result{}, err
		}
		if wait > 0 && (next == 0 || wait < next) {
			next = wait
		}
	}
	return ctrl.Result{RequeueAfter: next}, nil
}

// usedOn says which of the agent's disks (by name) should hold a copy.
func (br *backingImageReconciler) usedOn(ctx context.Context, img *v1alpha1.BackingImage) (map[string]bool, error) {
	a := br.a
	used := map[string]bool{}
	for _, d := range img.Spec.Disks {
		if node, disk, ok := strings.Cut(d, "/"); ok && node == a.cfg.NodeName {
			used[disk] = true
		}
	}
	var reps v1alpha1.ReplicaList
	if err := a.client.List(ctx, &reps, client.InNamespace(a.cfg.Namespace),
		client.MatchingLabels{v1alpha1.LabelNode: a.cfg.NodeName}); err != nil {
		return nil, fmt.Errorf("list replicas: %w", err)
	}
	for _, rep := range reps.Items {
		if rep.Spec.BackingImage == img.Name && rep.Spec.NodeID == a.cfg.NodeName {
			used[rep.Spec.DiskName] = true
		}
	}
	return used, nil
}

// cleanupWait reads the backing-image-cleanup-wait-interval Setting.
func (br *backingImageReconciler) cleanupWait(ctx context.Context) (time.Duration, error) {
	def := v1alpha1.SettingDefinitions[v1alpha1.SettingBackingImageCleanupWait].Default
	var s v1alpha1.Setting
	err := br.a.client.Get(ctx, types.NamespacedName{Namespace: br.a.cfg.Namespace, Name: v1alpha1.SettingBackingImageCleanupWait}, &s)
	switch {
	case client.IgnoreNotFound(err) != nil:
		return 0, fmt.Errorf("setting %s: %w", v1alpha1.SettingBackingImageCleanupWait, err)
	case err == nil && v1alpha1.ParseSettingValue(s.Name, s.Value) == nil:
		def = s.Value
	}
	d, err := time.ParseDuration(def)
	if err != nil {
		return 0, fmt.Errorf("setting %s: %w", v1alpha1.SettingBackingImageCleanupWait, err)
	}
	return d, nil
}

// reconcileDisk brings one disk's copy to what is wanted: copied while
// used, removed once unused for grace. It returns when to look again.
func (br *backingImageReconciler) reconcileDisk(ctx context.Context, img *v1alpha1.BackingImage, disk string, used bool,
	grace time.Duration) (time.Duration, error) {
	a := br.a
	key := a.cfg.NodeName + "/" + disk
	st := img.Status.DiskFileStatus[key]
	store := backingimage.Store{Dir: imagesDir(a.cfg.Disks[disk])}
	local, sum := localCopy(store, img)
	switch {
	case used && local != nil:
		if st.State == v1alpha1.BackingImageReady && st.UnusedSince == nil && st.Checksum == sum {
			return 0, nil
		}
		return 0, br.setStatus(ctx, img, key, &v1alpha1.BackingImageFileStatus{State: v1alpha1.BackingImageReady,
			Progress: 100, Checksum: sum}, int64(local.SizeBytes), sum)
	case used:
		ckey := img.Name + "/" + disk
		if !br.copies.start(ckey) {
			return copyRetry, nil // running, or failed a moment ago
		}
		if err := br.setStatus(ctx, img, key, &v1alpha1.BackingImageFileStatus{State: v1alpha1.BackingImagePending}, 0, ""); err != nil {
			br.copies.done(ckey, nil)
			return 0, err
		}
		go br.copy(img.DeepCopy(), disk, store, ckey)
		return 0, nil
	case local == nil:
		if _, ok := img.Status.DiskFileStatus[key]; ok && !br.copying(img.Name+"/"+disk) {
			return 0, br.setStatus(ctx, img, key, nil, 0, "")
		}
		return 0, nil
	case st.UnusedSince == nil:
		now := metav1.Now()
		st.UnusedSince = &now
		return grace, br.setStatus(ctx, img, key, &st, 0, "")
	}
	if left := grace - time.Since(st.UnusedSince.Time); left > 0 {
		return left + 100*time.Millisecond, nil
	}
	if err := store.Remove(img.Name); err != nil {
		if errors.Is(err, backingimage.ErrInUse) {
			return copyRetry, nil // a replica directory still links it
		}
		return 0, fmt.Errorf("remove unused copy of backing image %s on disk %s: %w", img.Name, disk, err)
	}
	a.log.Info("removed an unused backing image copy", "image", img.Name, "disk", disk)
	return 0, br.setStatus(ctx, img, key, nil, 0, "")
}

func (br *backingImageReconciler) copying(ckey string) bool {
	br.copies.mu.Lock()
	defer br.copies.mu.Unlock()
	return br.copies.running[ckey]
}

// localCopy returns the disk's copy of img and the SHA-256 of its source
// file, or nil when the disk has none of this image (a copy of an older
// image of the same name, with another checksum, does not count).
func localCopy(store backingimage.Store, img *v1alpha1.BackingImage) (*backingimage.Image, string) {
	have, err := store.Get(img.Name)
	if err != nil {
		return nil, ""
	}
	b, _ := os.ReadFile(filepath.Join(store.Dir, img.Name, sourceSumFile))
	sum := strings.TrimSpace(string(b))
	if img.Spec.Checksum != "" && sum != img.Spec.Checksum {
		return nil, ""
	}
	return have, sum
}

// setStatus writes one disk's entry of the image's status (nil removes
// it), and the image's size and checksum when they are not known yet.
func (br *backingImageReconciler) setStatus(ctx context.Context, img *v1alpha1.BackingImage, key string,
	fs *v1alpha1.BackingImageFileStatus, size int64, sum string) error {
	patch := client.MergeFrom(img.DeepCopy())
	if fs == nil {
		delete(img.Status.DiskFileStatus, key)
	} else {
		if img.Status.DiskFileStatus == nil {
			img.Status.DiskFileStatus = map[string]v1alpha1.BackingImageFileStatus{}
		}
		img.Status.DiskFileStatus[key] = *fs
	}
	if size > 0 && img.Status.Size == 0 {
		img.Status.Size = size
	}
	if sum != "" && img.Status.Checksum == "" {
		img.Status.Checksum = sum
	}
	if err := br.a.client.Status().Patch(ctx, img, patch); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("status of backing image %s: %w", img.Name, err)
	}
	return nil
}

// patchDisk writes one disk's entry through a fresh read: copies run
// beside reconciles, and a merge patch only names the one key.
func (br *backingImageReconciler) patchDisk(img *v1alpha1.BackingImage, key string, fs v1alpha1.BackingImageFileStatus,
	size int64, sum string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(br.ctx), 10*time.Second)
	defer cancel()
	var cur v1alpha1.BackingImage
	if err := br.a.client.Get(ctx, client.ObjectKeyFromObject(img), &cur); err != nil {
		return // gone: nothing to report
	}
	if err := br.setStatus(ctx, &cur, key, &fs, size, sum); err != nil {
		br.a.log.Warn("backing image status", "image", img.Name, "err", err)
	}
}

// copy makes the disk's copy of img, reporting progress, and brings the
// image (and so its replicas) back to a reconcile when done.
func (br *backingImageReconciler) copy(img *v1alpha1.BackingImage, disk string, store backingimage.Store, ckey string) {
	a := br.a
	key := a.cfg.NodeName + "/" + disk
	log := a.log.With("image", img.Name, "disk", disk)
	lastPct, lastAt := int32(-1), time.Time{}
	report := func(pct int32) {
		if pct == lastPct || pct < 100 && time.Since(lastAt) < 500*time.Millisecond {
			return
		}
		lastPct, lastAt = pct, time.Now()
		br.patchDisk(img, key, v1alpha1.BackingImageFileStatus{State: v1alpha1.BackingImageInProgress, Progress: pct}, 0, "")
	}
	report(0)
	have, sum, err := fetchImage(br.ctx, img, store, report)
	br.copies.done(ckey, err)
	if err != nil {
		log.Warn("backing image copy failed", "err", err)
		br.patchDisk(img, key, v1alpha1.BackingImageFileStatus{State: v1alpha1.BackingImageFailed,
			Message: err.Error()}, 0, "")
		return
	}
	log.Info("backing image copy ready", "bytes", have.SizeBytes, "sha256", sum)
	br.patchDisk(img, key, v1alpha1.BackingImageFileStatus{State: v1alpha1.BackingImageReady, Progress: 100, Checksum: sum},
		int64(have.SizeBytes), sum)
}

// fetchImage downloads (or reads) the image file into the store's
// directory, checks its SHA-256, and stores it as the image's copy.
// Progress runs to 50% over the transfer and to 100% over the import.
func fetchImage(ctx context.Context, img *v1alpha1.BackingImage, store backingimage.Store, report func(int32)) (*backingimage.Image, string, error) {
	if err := os.MkdirAll(store.Dir, 0o755); err != nil {
		return nil, "", err
	}
	if old, err := store.Get(img.Name); err == nil {
		// A copy of an earlier image of this name (another checksum).
		if err := store.Remove(old.Name); err != nil {
			return nil, "", fmt.Errorf("replace the disk's older copy: %w", err)
		}
	}
	// Downloads and imports an earlier run left unfinished.
	for _, pattern := range []string{".download-" + img.Name + "-*", "." + img.Name + ".partial-*"} {
		stale, _ := filepath.Glob(filepath.Join(store.Dir, pattern))
		for _, f := range stale {
			os.RemoveAll(f)
		}
	}
	tmp, err := os.CreateTemp(store.Dir, ".download-"+img.Name+"-")
	if err != nil {
		return nil, "", err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := sha256.New()
	pr := &progressWriter{report: func(done, total uint64) { report(percent(done, total) / 2) }}
	if err := transfer(ctx, img, io.MultiWriter(tmp, h, pr), pr); err != nil {
		return nil, "", err
	}
	if err := tmp.Sync(); err != nil {
		return nil, "", fmt.Errorf("sync the downloaded image: %w", err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if img.Spec.Checksum != "" && sum != img.Spec.Checksum {
		return nil, "", fmt.Errorf("the image file has SHA-256 %s, spec.checksum says %s", sum, img.Spec.Checksum)
	}
	have, err := store.Create(ctx, img.Name, tmp.Name(), func(done, total uint64) { report(50 + percent(done, total)/2) })
	if err != nil {
		return nil, "", fmt.Errorf("store the image: %w", err)
	}
	if err := os.WriteFile(filepath.Join(store.Dir, img.Name, sourceSumFile), []byte(sum+"\n"), 0o644); err != nil {
		_ = store.Remove(img.Name)
		return nil, "", err
	}
	return have, sum, nil
}

// transfer copies the image's source file into w, telling pr its size.
func transfer(ctx context.Context, img *v1alpha1.BackingImage, w io.Writer, pr *progressWriter) error {
	var src io.ReadCloser
	if img.Spec.URL != "" {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, img.Spec.URL, nil)
		if err != nil {
			return fmt.Errorf("download %s: %w", img.Spec.URL, err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return fmt.Errorf("download %s: %w", img.Spec.URL, err)
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			return fmt.Errorf("download %s: %s", img.Spec.URL, resp.Status)
		}
		src, pr.total = resp.Body, uint64(max(resp.ContentLength, 0))
	} else {
		f, err := os.Open(img.Spec.SourcePath)
		if err != nil {
			return fmt.Errorf("spec.sourcePath on this node: %w", err)
		}
		if fi, err := f.Stat(); err == nil {
			pr.total = uint64(fi.Size())
		}
		src = f
	}
	defer src.Close()
	n, err := io.Copy(w, contextReader{ctx, src})
	if err != nil {
		return fmt.Errorf("copy the image file: %w", err)
	}
	if pr.total != 0 && uint64(n) != pr.total {
		return fmt.Errorf("copy the image file: got %d bytes of %d", n, pr.total)
	}
	return nil
}

// contextReader stops a copy when ctx ends.
type contextReader struct {
	ctx context.Context
	r   io.Reader
}

func (c contextReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// progressWriter counts bytes written and reports them.
type progressWriter struct {
	done, total uint64
	report      func(done, total uint64)
}

func (p *progressWriter) Write(b []byte) (int, error) {
	p.done += uint64(len(b))
	p.report(p.done, p.total)
	return len(b), nil
}

func percent(done, total uint64) int32 {
	if total == 0 {
		return 0
	}
	return int32(min(done*100/total, 100))
}

// removeCopies removes the copies of a deleted image that no replica
// directory links.
func (br *backingImageReconciler) removeCopies(name string) error {
	for _, disk := range sortedKeys(br.a.cfg.Disks) {
		store := backingimage.Store{Dir: imagesDir(br.a.cfg.Disks[disk])}
		if _, err := store.Get(name); err != nil {
			continue
		}
		if err := store.Remove(name); err != nil && !errors.Is(err, backingimage.ErrInUse) {
			return fmt.Errorf("remove copy of deleted backing image %s on disk %s: %w", name, disk, err)
		}
	}
	return nil
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// backingReady says whether rep may start: it has no backing image, its
// data exists already (its chain names the image), or its disk holds a
// ready copy. When not, the condition says why it waits.
func (a *Agent) backingReady(ctx context.Context, rep *v1alpha1.Replica) (bool, metav1.Condition) {
	cond := metav1.Condition{Type: v1alpha1.ReplicaConditionBackingImageReady, Status: metav1.ConditionTrue, Reason: "Ready"}
	name := rep.Spec.BackingImage
	if name == "" {
		return true, cond
	}
	if _, err := os.Stat(filepath.Join(replicaDir(rep), "meta")); err == nil {
		cond.Message = "the replica was created on backing image " + name
		return true, cond
	}
	cond.Status = metav1.ConditionFalse
	var img v1alpha1.BackingImage
	if err := a.client.Get(ctx, types.NamespacedName{Namespace: rep.Namespace, Name: name}, &img); err != nil {
		cond.Reason, cond.Message = "BackingImageMissing", fmt.Sprintf("backing image %s: %v", name, err)
		return false, cond
	}
	store := backingimage.Store{Dir: imagesDir(rep.Spec.DiskPath)}
	if have, _ := localCopy(store, &img); have != nil {
		cond.Message = fmt.Sprintf("disk %s holds a ready copy of backing image %s", rep.Spec.DiskName, name)
		cond.Status = metav1.ConditionTrue
		return true, cond
	}
	st, ok := img.Status.DiskFileStatus[a.cfg.NodeName+"/"+rep.Spec.DiskName]
	switch {
	case !ok:
		cond.Reason = "CopyPending"
		cond.Message = fmt.Sprintf("waiting for a copy of backing image %s on disk %s", name, rep.Spec.DiskName)
	case st.State == v1alpha1.BackingImageFailed:
		cond.Reason = "CopyFailed"
		cond.Message = fmt.Sprintf("the copy of backing image %s on disk %s failed (retried in %s): %s", name, rep.Spec.DiskName, copyRetry, st.Message)
	default:
		cond.Reason = "Copying"
		cond.Message = fmt.Sprintf("waiting for the copy of backing image %s on disk %s: %s %d%%", name, rep.Spec.DiskName, st.State, st.Progress)
	}
	return false, cond
}

// setReplicaCondition records cond in the replica's status if it changed.
func (a *Agent) setReplicaCondition(ctx context.Context, rep *v1alpha1.Replica, cond metav1.Condition) error {
	if old := meta.FindStatusCondition(rep.Status.Conditions, cond.Type); old != nil && old.Status == cond.Status &&
		old.Reason == cond.Reason && old.Message == cond.Message {
		return nil
	}
	patch := client.MergeFrom(rep.DeepCopy())
	cond.ObservedGeneration = rep.Generation
	meta.SetStatusCondition(&rep.Status.Conditions, cond)
	if err := a.client.Status().Patch(ctx, rep, patch); err != nil {
		return fmt.Errorf("condition of replica %s: %w", rep.Name, err)
	}
	return nil
}

// linkBacking links a new replica's directory to its disk's copy of its
// backing image; it returns the replica's Backing (nil for a replica
// without one, or one created before: its chain says what it holds).
func (a *Agent) linkBacking(ctx context.Context, rep *v1alpha1.Replica, dir string) (*replica.Backing, error) {
	name := rep.Spec.BackingImage
	if name == "" {
		return nil, nil
	}
	if _, err := os.Stat(filepath.Join(dir, "meta")); err == nil {
		return nil, nil
	}
	store := backingimage.Store{Dir: imagesDir(rep.Spec.DiskPath)}
	if have, err := store.Get(name); err == nil && have.SizeBytes > uint64(rep.Spec.VolumeSize) {
		return nil, fmt.Errorf("replica %s: backing image %s holds %d bytes, more than the volume's %d", rep.Name, name,
			have.SizeBytes, rep.Spec.VolumeSize)
	}
	img, err := store.Link(ctx, name, dir)
	if err != nil {
		return nil, fmt.Errorf("replica %s on backing image %s: %w", rep.Name, name, err)
	}
	return &replica.Backing{Image: name, SHA256: img.SHA256}, nil
}

// backingWait is how often a replica waiting for its backing image copy
// looks again.
const backingWait = time.Second
