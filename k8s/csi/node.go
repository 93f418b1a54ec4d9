package csi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/drover-io/drover/k8s/api/v1alpha1"
)

type node struct {
	csipb.UnimplementedNodeServer
	d *Driver
}

var _ csipb.NodeServer = node{}

// checkID refuses a volume ID that cannot be a Drover volume's (it also
// names the state file, so it must not be a path).
func checkID(call, id string) error {
	if id == "" {
		return status.Errorf(codes.InvalidArgument, "%s: no volume ID given", call)
	}
	if len(validation.IsDNS1123Label(id)) > 0 {
		return status.Errorf(codes.NotFound, "%s: volume %q: no such volume (not a Drover volume ID)", call, id)
	}
	return nil
}

// endpoint is the NBD endpoint to attach: the publish context's, else
// the Volume's status when it is attached to this node.
func (n node) endpoint(ctx context.Context, id string, pc map[string]string) (string, error) {
	if ep := pc[PublishContextEndpoint]; ep != "" {
		return ep, nil
	}
	var v v1alpha1.Volume
	if err := n.d.c.Get(ctx, controller{d: n.d}.key(id), &v); err != nil {
		return "", status.Errorf(codes.NotFound, "volume %s: %v", id, err)
	}
	if v.Status.CurrentNodeID != n.d.cfg.NodeID || v.Status.Endpoint == "" {
		return "", status.Errorf(codes.FailedPrecondition, "volume %s is not attached to node %s (ControllerPublishVolume first)", id, n.d.cfg.NodeID)
	}
	return v.Status.Endpoint, nil
}

func (n node) NodeStageVolume(ctx context.Context, req *csipb.NodeStageVolumeRequest) (*csipb.NodeStageVolumeResponse, error) {
	if err := checkID("NodeStageVolume", req.VolumeId); err != nil {
		return nil, err
	}
	if req.StagingTargetPath == "" {
		return nil, status.Error(codes.InvalidArgument, "NodeStageVolume: no staging target path given")
	}
	if err := checkCap(req.VolumeCapability); err != nil {
		return nil, err
	}
	unlock, err := n.d.lock(req.VolumeId, "NodeStageVolume")
	if err != nil {
		return nil, err
	}
	defer unlock()
	staging := filepath.Clean(req.StagingTargetPath)
	st, err := n.d.loadState(req.VolumeId)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	block := req.VolumeCapability.GetBlock() != nil
	if st != nil && (st.StagingPath != staging || st.Block != block) {
		return nil, status.Errorf(codes.FailedPrecondition, "NodeStageVolume %s: already staged at %s (block %v)", req.VolumeId, st.StagingPath, st.Block)
	}
	if st == nil {
		ep, err := n.endpoint(ctx, req.VolumeId, req.PublishContext)
		if err != nil {
			return nil, err
		}
		fuseDir := filepath.Join(n.d.cfg.StateDir, req.VolumeId+".fuse")
		st = &stageState{VolumeID: req.VolumeId, StagingPath: staging, Endpoint: ep, FuseDir: fuseDir,
			Image: filepath.Join(fuseDir, "disk"), Block: block, Growable: true,
			Readonly: req.PublishContext[PublishContextReadonly] == "true"}
		if err := n.d.saveState(st); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	if err := n.recheck(ctx, st, req.PublishContext[PublishContextEndpoint]); err != nil {
		return nil, status.Errorf(codes.Internal, "NodeStageVolume %s: %v", req.VolumeId, err)
	}
	if err := n.stage(ctx, st, req.VolumeCapability); err != nil {
		if s, ok := status.FromError(err); ok {
			return nil, s.Err()
		}
		return nil, status.Errorf(codes.Internal, "NodeStageVolume %s: %v", req.VolumeId, err)
	}
	return &csipb.NodeStageVolumeResponse{}, nil
}

// recheck looks whether the steps st records still hold. When the
// attachment is gone (nbdfuse died, the node rebooted) it takes down what
// is left of it, last first, and clears the steps, so stage attaches
// again at the endpoint the caller gives now (the engine may have moved
// to another port); a step that merely vanished (an unmount by hand) is
// cleared so stage redoes it.
func (n node) recheck(ctx context.Context, st *stageState, endpoint string) error {
	if !st.FuseMounted {
		return nil
	}
	fuseUp, err := isMounted(st.FuseDir)
	if err != nil {
		return err
	}
	if _, serr := os.Stat(st.Image); fuseUp && serr == nil {
		if st.Loop != "" {
			if !ownsLoop(ctx, st) {
				st.Loop, st.LoopDevice, st.LoopInode, st.LoopFile, st.Mounted = "", 0, 0, "", false
			}
		}
		if st.Mounted {
			if up, err := isMounted(st.StagingPath); err == nil && !up {
				st.Mounted = false
			}
		}
		return n.d.saveState(st)
	}
	n.d.log.Warn("attachment lost; attaching again", "volume", st.VolumeID, "endpoint", st.Endpoint)
	if up, err := isMounted(st.StagingPath); err == nil && up {
		// Lazily: IO on it fails anyway, and a process may hold it.
		if _, err := run(ctx, "umount", "--lazy", st.StagingPath); err != nil {
			return err
		}
	}
	if ownsLoop(ctx, st) {
		// Only while it is still the device over our image: after a
		// reboot the name may be another volume's.
		if _, err := run(ctx, "losetup", "--detach", st.Loop); err != nil {
			return err
		}
	}
	if fuseUp {
		if _, err := run(ctx, "fusermount3", "-u", "-z", st.FuseDir); err != nil {
			return err
		}
	}
	st.FuseMounted, st.Loop, st.LoopDevice, st.LoopInode, st.LoopFile, st.Mounted = false, "", 0, 0, "", false
	if endpoint != "" {
		st.Endpoint = endpoint
	}
	return n.d.saveState(st)
}

// stage takes the steps NodeStageVolume has not taken yet, recording
// each: nbdfuse, loop device, filesystem (only on a blank device), mount.
func (n node) stage(ctx context.Context, st *stageState, vc *csipb.VolumeCapability) error {
	save := func() error { return n.d.saveState(st) }
	if !st.FuseMounted {
		size, err := exportSize(ctx, st.Endpoint)
		if err != nil {
			return status.Errorf(codes.Unavailable, "NodeStageVolume %s: %v", st.VolumeID, err)
		}
		st.SizeBytes = size
		if err := n.d.startNbdfuse(ctx, st); err != nil {
			return status.Errorf(codes.Unavailable, "NodeStageVolume %s: attach %s: %v", st.VolumeID, st.Endpoint, err)
		}
		st.FuseMounted = true
		if err := save(); err != nil {
			return err
		}
	}
	if st.Loop == "" {
		loop, err := loopFor(ctx, st.Image)
		if err != nil {
			return err
		}
		if loop == "" {
			args := []string{"--find", "--show", st.Image}
			if st.Growable {
				args = append(args, "--sizelimit", strconv.FormatInt(st.SizeBytes, 10))
			}
			if st.Readonly {
				args = append(args, "--read-only")
			}
			out, err := run(ctx, "losetup", args...)
			if err != nil {
				return fmt.Errorf("loop device over %s: %w", st.Image, err)
			}
			loop = strings.TrimSpace(out)
		}
		id, err := loopBacking(loop)
		if err != nil {
			return err
		}
		st.Loop, st.LoopDevice, st.LoopInode, st.LoopFile = loop, id.dev, id.ino, id.name
		if err := save(); err != nil {
			return err
		}
	}
	if st.Block {
		return nil
	}
	want := vc.GetMount().GetFsType()
	if want == "" {
		want = "ext4"
	}
	if st.FsType == "" {
		have, err := probeFS(ctx, st.Loop)
		if err != nil {
			return err
		}
		switch have {
		case "":
			if st.Readonly {
				return status.Errorf(codes.FailedPrecondition, "NodeStageVolume %s: the volume is blank and published read-only: nothing to mount", st.VolumeID)
			}
			// Blank: format. Only ever here, after blkid found nothing.
			args := []string{"-q", "-K", st.Loop} // xfs: -K skips the discard
			if want == "ext4" {
				args = []string{"-q", "-E", "nodiscard", "-F", st.Loop}
			}
			if _, err := run(ctx, "mkfs."+want, args...); err != nil {
				return fmt.Errorf("format %s: %w", st.Loop, err)
			}
			st.Formatted = true
		case want:
		default:
			return status.Errorf(codes.FailedPrecondition,
				"NodeStageVolume %s: the volume holds %s, %s was asked for; refusing to format it (that would destroy its data)", st.VolumeID, have, want)
		}
		st.FsType = want
		if err := save(); err != nil {
			return err
		}
	} else if st.FsType != want {
		return status.Errorf(codes.FailedPrecondition, "NodeStageVolume %s: staged with %s, %s asked", st.VolumeID, st.FsType, want)
	}
	if err := os.MkdirAll(st.StagingPath, 0o750); err != nil {
		return fmt.Errorf("staging path: %w", err)
	}
	mounted, err := isMounted(st.StagingPath)
	if err != nil {
		return err
	}
	if !mounted {
		if st.FsType == "ext4" && !st.Formatted && !st.Readonly {
			if err := growExt4Offline(ctx, st.Loop); err != nil {
				return err
			}
		}
		opts := append([]string{"discard"}, vc.GetMount().GetMountFlags()...)
		if st.Readonly {
			// The device is read-only: no journal replay either.
			opts = append(opts, "ro", map[string]string{"ext4": "noload", "xfs": "norecovery"}[st.FsType])
		}
		if _, err := run(ctx, "mount", "-t", st.FsType, "-o", strings.Join(opts, ","), st.Loop, st.StagingPath); err != nil {
			return fmt.Errorf("mount %s on %s: %w", st.Loop, st.StagingPath, err)
		}
		if st.FsType == "xfs" && !st.Formatted && !st.Readonly {
			// A volume grown while it was not staged: xfs grows mounted.
			if _, err := run(ctx, "xfs_growfs", st.StagingPath); err != nil {
				return err
			}
		}
	}
	if !st.Mounted {
		st.Mounted = true
		return save()
	}
	return nil
}

// growExt4Offline grows an unmounted ext4 to its device when the
// volume grew while it was not staged (or when growing it mounted was
// refused): e2fsck -f -p first, as resize2fs requires, then resize2fs.
// Offline resizing needs no CAP_SYS_RESOURCE.
func growExt4Offline(ctx context.Context, dev string) error {
	out, err := run(ctx, "dumpe2fs", "-h", dev)
	if err != nil {
		return err
	}
	var blocks, blockBytes int64
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(line, ":")
		switch v = strings.TrimSpace(v); {
		case !ok:
		case k == "Block count":
			blocks, _ = strconv.ParseInt(v, 10, 64)
		case k == "Block size":
			blockBytes, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	size, err := deviceSize(dev)
	if err != nil {
		return err
	}
	if blocks == 0 || blockBytes == 0 || size-blocks*blockBytes < 1<<20 {
		return nil // nothing worth a resize
	}
	if _, err := run(ctx, "e2fsck", "-f", "-p", dev); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() > 1 { // 1: errors corrected
			return fmt.Errorf("check before growing: %w", err)
		}
	}
	if _, err := run(ctx, "resize2fs", dev); err != nil {
		return fmt.Errorf("grow the filesystem to the volume: %w", err)
	}
	return nil
}

func (n node) NodeUnstageVolume(ctx context.Context, req *csipb.NodeUnstageVolumeRequest) (*csipb.NodeUnstageVolumeResponse, error) {
	if req.VolumeId == "" {
		return nil, status.Error(codes.InvalidArgument, "NodeUnstageVolume: no volume ID given")
	}
	if req.StagingTargetPath == "" {
		return nil, status.Error(codes.InvalidArgument, "NodeUnstageVolume: no staging target path given")
	}
	if err := checkID("NodeUnstageVolume", req.VolumeId); err != nil {
		return &csipb.NodeUnstageVolumeResponse{}, nil // nothing of ours to undo
	}
	unlock, err := n.d.lock(req.VolumeId, "NodeUnstageVolume")
	if err != nil {
		return nil, err
	}
	defer unlock()
	st, err := n.d.loadState(req.VolumeId)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if st == nil {
		return &csipb.NodeUnstageVolumeResponse{}, nil
	}
	if st.StagingPath != filepath.Clean(req.StagingTargetPath) {
		return nil, status.Errorf(codes.FailedPrecondition, "NodeUnstageVolume %s: staged at %s, not %s", req.VolumeId, st.StagingPath, req.StagingTargetPath)
	}
	if err := n.unstage(ctx, st); err != nil {
		return nil, status.Errorf(codes.Internal, "NodeUnstageVolume %s: %v", req.VolumeId, err)
	}
	return &csipb.NodeUnstageVolumeResponse{}, nil
}

// unstage undoes the steps st records, last first, recording each.
func (n node) unstage(ctx context.Context, st *stageState) error {
	if st.Mounted {
		if mounted, err := isMounted(st.StagingPath); err != nil {
			return err
		} else if mounted {
			if _, err := run(ctx, "umount", st.StagingPath); err != nil {
				return err
			}
		}
		st.Mounted = false
		if err := n.d.saveState(st); err != nil {
			return err
		}
	}
	if st.Loop != "" {
		// Detach only the loop device over our image (checked by the
		// backing file's identity, which works also when nbdfuse is
		// gone): after a reboot the name may belong to someone else.
		if ownsLoop(ctx, st) {
			if _, err := run(ctx, "losetup", "--detach", st.Loop); err != nil {
				return err
			}
		}
		st.Loop, st.LoopDevice, st.LoopInode, st.LoopFile = "", 0, 0, ""
		if err := n.d.saveState(st); err != nil {
			return err
		}
	}
	if st.FuseMounted {
		if mounted, err := isMounted(st.FuseDir); err != nil {
			return err
		} else if mounted {
			if _, err := run(ctx, "fusermount3", "-u", st.FuseDir); err != nil {
				// A FUSE mount whose nbdfuse died may refuse a plain
				// unmount; nothing uses it any more (the loop device is
				// detached), so a lazy one is safe.
				if _, lerr := run(ctx, "fusermount3", "-u", "-z", st.FuseDir); lerr != nil {
					return err
				}
			}
		}
		st.FuseMounted = false
		if err := n.d.saveState(st); err != nil {
			return err
		}
	}
	for _, p := range []string{st.FuseDir + ".pid", st.FuseDir + ".log"} {
		_ = os.Remove(p)
	}
	if err := os.Remove(st.FuseDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", st.FuseDir, err)
	}
	return n.d.removeState(st.VolumeID)
}

func (n node) NodePublishVolume(ctx context.Context, req *csipb.NodePublishVolumeRequest) (*csipb.NodePublishVolumeResponse, error) {
	switch {
	case req.VolumeId == "":
		return nil, status.Error(codes.InvalidArgument, "NodePublishVolume: no volume ID given")
	case req.TargetPath == "":
		return nil, status.Error(codes.InvalidArgument, "NodePublishVolume: no target path given")
	case req.VolumeCapability == nil:
		return nil, status.Error(codes.InvalidArgument, "NodePublishVolume: no volume capability given")
	case req.StagingTargetPath == "":
		return nil, status.Error(codes.FailedPrecondition, "NodePublishVolume: no staging target path given (NodeStageVolume first)")
	}
	if err := checkID("NodePublishVolume", req.VolumeId); err != nil {
		return nil, err
	}
	if err := checkCap(req.VolumeCapability); err != nil {
		return nil, err
	}
	unlock, err := n.d.lock(req.VolumeId, "NodePublishVolume")
	if err != nil {
		return nil, err
	}
	defer unlock()
	st, err := n.d.loadState(req.VolumeId)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if st == nil || st.StagingPath != filepath.Clean(req.StagingTargetPath) || (!st.Mounted && !st.Block) || st.Loop == "" {
		return nil, status.Errorf(codes.FailedPrecondition, "NodePublishVolume %s: not staged at %s", req.VolumeId, req.StagingTargetPath)
	}
	block := req.VolumeCapability.GetBlock() != nil
	if block != st.Block {
		return nil, status.Errorf(codes.InvalidArgument, "NodePublishVolume %s: staged as block %v, asked for block %v", req.VolumeId, st.Block, block)
	}
	target := filepath.Clean(req.TargetPath)
	if req.VolumeCapability.GetAccessMode().GetMode() == csipb.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER {
		for _, p := range st.Published {
			if p != target {
				return nil, status.Errorf(codes.FailedPrecondition, "NodePublishVolume %s: single-writer volume already published at %s", req.VolumeId, p)
			}
		}
	}
	if err := n.publish(ctx, st, target, req.Readonly); err != nil {
		return nil, status.Errorf(codes.Internal, "NodePublishVolume %s: %v", req.VolumeId, err)
	}
	if !slices.Contains(st.Published, target) {
		st.Published = append(st.Published, target)
		if err := n.d.saveState(st); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	return &csipb.NodePublishVolumeResponse{}, nil
}

// publish bind-mounts the staged filesystem (or, for a block volume,
// the loop device) on target.
func (n node) publish(ctx context.Context, st *stageState, target string, readonly bool) error {
	mounted, err := isMounted(target)
	if err != nil || mounted {
		return err
	}
	src := st.StagingPath
	if st.Block {
		src = st.Loop
		if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
			return err
		}
		f, err := os.OpenFile(target, os.O_CREATE|os.O_RDONLY, 0o600)
		if err != nil {
			return fmt.Errorf("block target: %w", err)
		}
		f.Close()
	} else if err := os.MkdirAll(target, 0o750); err != nil {
		return fmt.Errorf("target: %w", err)
	}
	if _, err := run(ctx, "mount", "--bind", src, target); err != nil {
		return err
	}
	if readonly {
		if _, err := run(ctx, "mount", "-o", "remount,bind,ro", target); err != nil {
			_, _ = run(ctx, "umount", target)
			return err
		}
	}
	return nil
}

func (n node) NodeUnpublishVolume(ctx context.Context, req *csipb.NodeUnpublishVolumeRequest) (*csipb.NodeUnpublishVolumeResponse, error) {
	switch {
	case req.VolumeId == "":
		return nil, status.Error(codes.InvalidArgument, "NodeUnpublishVolume: no volume ID given")
	case req.TargetPath == "":
		return nil, status.Error(codes.InvalidArgument, "NodeUnpublishVolume: no target path given")
	}
	unlock, err := n.d.lock(req.VolumeId, "NodeUnpublishVolume")
	if err != nil {
		return nil, err
	}
	defer unlock()
	target := filepath.Clean(req.TargetPath)
	if mounted, err := isMounted(target); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	} else if mounted {
		if _, err := run(ctx, "umount", target); err != nil {
			return nil, status.Errorf(codes.Internal, "NodeUnpublishVolume %s: %v", req.VolumeId, err)
		}
	}
	if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, status.Errorf(codes.Internal, "NodeUnpublishVolume %s: remove %s: %v", req.VolumeId, target, err)
	}
	if checkID("", req.VolumeId) == nil {
		if st, err := n.d.loadState(req.VolumeId); err == nil && st != nil {
			if i := slices.Index(st.Published, target); i >= 0 {
				st.Published = slices.Delete(st.Published, i, i+1)
				if err := n.d.saveState(st); err != nil {
					return nil, status.Error(codes.Internal, err.Error())
				}
			}
		}
	}
	return &csipb.NodeUnpublishVolumeResponse{}, nil
}

func (n node) NodeGetVolumeStats(ctx context.Context, req *csipb.NodeGetVolumeStatsRequest) (*csipb.NodeGetVolumeStatsResponse, error) {
	if req.VolumeId == "" {
		return nil, status.Error(codes.InvalidArgument, "NodeGetVolumeStats: no volume ID given")
	}
	if req.VolumePath == "" {
		return nil, status.Error(codes.InvalidArgument, "NodeGetVolumeStats: no volume path given")
	}
	st, err := n.staged("NodeGetVolumeStats", req.VolumeId)
	if err != nil {
		return nil, err
	}
	path := filepath.Clean(req.VolumePath)
	if path != st.StagingPath && !slices.Contains(st.Published, path) {
		return nil, status.Errorf(codes.NotFound, "NodeGetVolumeStats %s: %s is not where the volume is staged or published", req.VolumeId, req.VolumePath)
	}
	if st.Block {
		size, err := deviceSize(st.Loop)
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		return &csipb.NodeGetVolumeStatsResponse{Usage: []*csipb.VolumeUsage{{Total: size, Unit: csipb.VolumeUsage_BYTES}}}, nil
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return nil, status.Errorf(codes.NotFound, "NodeGetVolumeStats %s: statfs %s: %v", req.VolumeId, path, err)
	}
	bs := int64(fs.Bsize)
	return &csipb.NodeGetVolumeStatsResponse{Usage: []*csipb.VolumeUsage{
		{Unit: csipb.VolumeUsage_BYTES, Total: int64(fs.Blocks) * bs, Available: int64(fs.Bavail) * bs, Used: int64(fs.Blocks-fs.Bfree) * bs},
		{Unit: csipb.VolumeUsage_INODES, Total: int64(fs.Files), Available: int64(fs.Ffree), Used: int64(fs.Files - fs.Ffree)},
	}}, nil
}

// staged reads a volume's state; a volume not staged here is NotFound.
func (n node) staged(call, id string) (*stageState, error) {
	if err := checkID(call, id); err != nil {
		return nil, err
	}
	st, err := n.d.loadState(id)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if st == nil {
		return nil, status.Errorf(codes.NotFound, "%s: volume %s is not staged on node %s", call, id, n.d.cfg.NodeID)
	}
	return st, nil
}

// NodeGetVolumeHealth reports the Volume's robustness (degraded,
// faulted) and whether the attachment on this node is gone.
func (n node) NodeGetVolumeHealth(ctx context.Context, req *csipb.NodeGetVolumeHealthRequest) (*csipb.NodeGetVolumeHealthResponse, error) {
	if req.VolumeId == "" {
		return nil, status.Error(codes.InvalidArgument, "NodeGetVolumeHealth: no volume ID given")
	}
	st, err := n.staged("NodeGetVolumeHealth", req.VolumeId)
	if err != nil {
		return nil, err
	}
	v, err := controller{d: n.d}.getVolume(ctx, req.VolumeId)
	if err != nil {
		return nil, err
	}
	h := health(v)
	if _, err := os.Stat(st.Image); err != nil {
		h.HealthStatuses = append(h.HealthStatuses, &csipb.VolumeHealth_VolumeHealthEntry{Status: csipb.VolumeHealthErrorType_INACCESSIBLE,
			Reason: "AttachmentLost", Message: fmt.Sprintf("the nbdfuse file %s is gone: %v", st.Image, err)})
	}
	return &csipb.NodeGetVolumeHealthResponse{VolumeHealth: h}, nil
}

// NodeExpandVolume grows the device to the volume's new size, once the
// engine serves it, and the filesystem to the device: the loop device
// over the growable export gets a larger size limit while mounted.
func (n node) NodeExpandVolume(ctx context.Context, req *csipb.NodeExpandVolumeRequest) (*csipb.NodeExpandVolumeResponse, error) {
	if req.VolumeId == "" {
		return nil, status.Error(codes.InvalidArgument, "NodeExpandVolume: no volume ID given")
	}
	if req.VolumePath == "" {
		return nil, status.Error(codes.InvalidArgument, "NodeExpandVolume: no volume path given")
	}
	st, err := n.staged("NodeExpandVolume", req.VolumeId)
	if err != nil {
		return nil, err
	}
	unlock, err := n.d.lock(req.VolumeId, "NodeExpandVolume")
	if err != nil {
		return nil, err
	}
	defer unlock()
	want := req.GetCapacityRange().GetRequiredBytes()
	if st.Growable {
		// The engine serves the new size once the agent has grown it;
		// only then may the loop device reach it.
		exact, err := exportSize(ctx, st.Endpoint)
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "NodeExpandVolume %s: %v", req.VolumeId, err)
		}
		if exact < want {
			return nil, status.Errorf(codes.Unavailable, "NodeExpandVolume %s: the engine serves %d bytes, %d asked: not grown yet; retry", req.VolumeId, exact, want)
		}
		if exact > st.SizeBytes {
			if err := setLoopSize(st.Loop, exact); err != nil {
				return nil, status.Errorf(codes.Internal, "NodeExpandVolume %s: %v", req.VolumeId, err)
			}
			st.SizeBytes = exact
			if err := n.d.saveState(st); err != nil {
				return nil, status.Error(codes.Internal, err.Error())
			}
		}
	} else if _, err := run(ctx, "losetup", "--set-capacity", st.Loop); err != nil {
		return nil, status.Errorf(codes.Internal, "NodeExpandVolume %s: %v", req.VolumeId, err)
	}
	size, err := deviceSize(st.Loop)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if want > size {
		return nil, status.Errorf(codes.FailedPrecondition, "NodeExpandVolume %s: the device is %d bytes, %d asked", req.VolumeId, size, want)
	}
	if !st.Block {
		var err error
		var out string
		switch st.FsType {
		case "ext4":
			out, err = run(ctx, "resize2fs", st.Loop)
		case "xfs":
			out, err = run(ctx, "xfs_growfs", st.StagingPath)
		}
		if err != nil && st.FsType == "ext4" && strings.Contains(out, "Permission denied") {
			// The kernel asks CAP_SYS_RESOURCE for ext4's online resize
			// (EXT4_IOC_RESIZE_FS); some hosts withhold it from root.
			return nil, status.Errorf(codes.FailedPrecondition, "NodeExpandVolume %s: the device grew to %d bytes, but growing a mounted ext4 "+
				"needs CAP_SYS_RESOURCE, which this process lacks (%v); xfs grows without it", req.VolumeId, size, err)
		}
		if err != nil {
			return nil, status.Errorf(codes.Internal, "NodeExpandVolume %s: %v", req.VolumeId, err)
		}
	}
	return &csipb.NodeExpandVolumeResponse{CapacityBytes: size}, nil
}

// NodeGetStorageHealth reports this node's Drover storage: unreachable
// while the agent's Node is missing or not ready, degraded for each
// disk whose status carries an error message.
func (n node) NodeGetStorageHealth(ctx context.Context, _ *csipb.NodeGetStorageHealthRequest) (*csipb.NodeGetStorageHealthResponse, error) {
	var nd v1alpha1.Node
	resp := &csipb.NodeGetStorageHealthResponse{}
	add := func(t csipb.StorageHealthErrorType, reason, msg string) {
		resp.BackendHealth = append(resp.BackendHealth, &csipb.NodeGetStorageHealthResponse_StorageBackendHealth{Status: t, Reason: reason, Message: msg})
	}
	if err := n.d.c.Get(ctx, controller{d: n.d}.key(n.d.cfg.NodeID), &nd); err != nil {
		add(csipb.StorageHealthErrorType_STORAGE_UNREACHABLE, "NodeUnknown", fmt.Sprintf("node %s: %v", n.d.cfg.NodeID, err))
		return resp, nil
	}
	if !nodeReady(&nd) {
		add(csipb.StorageHealthErrorType_STORAGE_UNREACHABLE, "NodeNotReady", fmt.Sprintf("node %s: the agent does not report in", nd.Name))
	}
	names := make([]string, 0, len(nd.Status.DiskStatus))
	for name := range nd.Status.DiskStatus {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if msg := nd.Status.DiskStatus[name].Message; msg != "" {
			add(csipb.StorageHealthErrorType_STORAGE_DEGRADED, "DiskError", fmt.Sprintf("disk %s: %s", name, msg))
		}
	}
	return resp, nil
}

func (n node) NodeGetCapabilities(context.Context, *csipb.NodeGetCapabilitiesRequest) (*csipb.NodeGetCapabilitiesResponse, error) {
	var caps []*csipb.NodeServiceCapability
	for _, t := range []csipb.NodeServiceCapability_RPC_Type{
		csipb.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csipb.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csipb.NodeServiceCapability_RPC_EXPAND_VOLUME,
		csipb.NodeServiceCapability_RPC_GET_VOLUME_HEALTH,
		csipb.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
		csipb.NodeServiceCapability_RPC_GET_STORAGE_HEALTH,
	} {
		caps = append(caps, &csipb.NodeServiceCapability{Type: &csipb.NodeServiceCapability_Rpc{Rpc: &csipb.NodeServiceCapability_RPC{Type: t}}})
	}
	return &csipb.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

func (n node) NodeGetInfo(context.Context, *csipb.NodeGetInfoRequest) (*csipb.NodeGetInfoResponse, error) {
	seg := map[string]string{TopologyNodeKey: n.d.cfg.NodeID}
	if n.d.cfg.Zone != "" {
		seg[TopologyZoneKey] = n.d.cfg.Zone
	}
	return &csipb.NodeGetInfoResponse{NodeId: n.d.cfg.NodeID, AccessibleTopology: &csipb.Topology{Segments: seg}}, nil
}
