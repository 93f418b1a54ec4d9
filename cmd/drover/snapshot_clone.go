package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/transports/control/controlpb"
)

const snapshotCloneLong = `Clone a snapshot into a new volume: create one replica directory per --dir
holding exactly the snapshot's content (same size), then serve them as any
volume (drover replica --dir D for each and drover engine, or drover dev
--data-dir X with --dir X/dev-1,X/dev-2,X/dev-3).

Only the extents the snapshot's chain holds are copied (the rest reads as
zeros), streamed through the source engine, which keeps serving meanwhile.
Each directory is built beside its final name (D.clone-partial) and renamed
only once its data is flushed, so an interrupted clone leaves no directory
that looks like a volume; run it again.

The clone is usable once the copy is done, not before: a clone that read
through to the source until copied would make a volume depend on another
volume's replicas, whose layers the source engine merges and drops at will
(shared read-only bases are what backing images are for).`

func newSnapshotCloneCmd(cf *clientFlags) *cobra.Command {
	var dirs []string
	cmd := &cobra.Command{Use: "clone NAME --dir D[,D...]", Short: "Copy a snapshot into the replica directories of a new volume",
		Long: snapshotCloneLong, Args: cobra.ExactArgs(1),
		Example: "  drover snapshot clone nightly --dir /data/clone/dev-1,/data/clone/dev-2,/data/clone/dev-3",
		RunE: func(cmd *cobra.Command, args []string) error {
			c, conn, err := cf.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			// No overall timeout: a clone takes as long as its data.
			return cloneSnapshot(cmd.Context(), c, args[0], dirs, cmd.OutOrStdout())
		}}
	cmd.Flags().StringSliceVar(&dirs, "dir", nil, "new replica directories (must not exist); a replica's id is its directory's base name")
	_ = cmd.MarkFlagRequired("dir")
	return cmd
}

// cloneSnapshot copies snapshot name into new replica directories.
func cloneSnapshot(ctx context.Context, c controlpb.ControlClient, name string, dirs []string, out io.Writer) error {
	info, err := c.VolumeInfo(ctx, &controlpb.VolumeInfoRequest{})
	if err != nil {
		return err
	}
	found := false
	for _, n := range info.GetChain() {
		found = found || n == name
	}
	if !found {
		return fmt.Errorf("no snapshot %q (snapshots: %s)", name, strings.Join(info.GetChain(), ", "))
	}
	ext, err := c.ChangedExtents(ctx, &controlpb.ChangedExtentsRequest{From: "", To: name})
	if err != nil {
		return fmt.Errorf("extents of %q: %w", name, err)
	}
	size := info.GetSizeBytes()
	var reps []*replicaDir
	var partials []string
	defer func() {
		for _, r := range reps {
			r.Close()
		}
	}()
	for _, d := range dirs {
		if _, err := os.Stat(d); err == nil || !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("clone into %s: it already exists", d)
		}
		tmp := d + ".clone-partial"
		if err := os.RemoveAll(tmp); err != nil {
			return err
		}
		r, err := openReplicaDir(tmp, proto.ReplicaID(filepath.Base(d)), size)
		if err != nil {
			return err
		}
		reps, partials = append(reps, r), append(partials, tmp)
		if rep := r.runner.Do(proto.Request{ID: 1, Epoch: 1, Op: proto.OpOpen}); rep.Status != proto.StatusOK {
			return fmt.Errorf("open %s: %v %s", tmp, rep.Status, rep.Err)
		}
	}
	var total uint64
	for _, e := range ext.GetExtents() {
		total += e.GetBlockCount() * proto.BlockSize
	}
	fmt.Fprintf(out, "cloning snapshot %q (%s of %s held) into %d replicas\n", name, humanBytes(total), humanBytes(size), len(dirs))
	cp := &cloneCopy{reps: reps, nextID: 2, progress: newByteProgress(out, "clone", total)}
	for _, e := range ext.GetExtents() {
		if err := cp.extent(ctx, c, name, e.GetBlockIndex()*proto.BlockSize, e.GetBlockCount()*proto.BlockSize); err != nil {
			return err
		}
	}
	for i, r := range reps {
		if rep := r.runner.Do(proto.Request{ID: cp.id(), Epoch: 1, Op: proto.OpFlush}); rep.Status != proto.StatusOK {
			return fmt.Errorf("flush %s: %v %s", partials[i], rep.Status, rep.Err)
		}
	}
	for i, r := range reps {
		if err := r.Close(); err != nil {
			return fmt.Errorf("close %s: %w", partials[i], err)
		}
		if err := os.Rename(partials[i], dirs[i]); err != nil {
			return fmt.Errorf("clone %s: %w", dirs[i], err)
		}
	}
	reps = nil
	cp.progress.done()
	fmt.Fprintf(out, "cloned %q: %s\n", name, strings.Join(dirs, ", "))
	return nil
}

// cloneCopy writes streamed snapshot data into every clone replica.
type cloneCopy struct {
	reps     []*replicaDir
	nextID   uint64
	progress *byteProgress
}

func (cp *cloneCopy) id() uint64 { cp.nextID++; return cp.nextID }

// extent streams [off, off+length) of the snapshot and writes its non-zero
// blocks (a new replica reads zeros elsewhere) in requests of at most
// 1,024 blocks.
func (cp *cloneCopy) extent(ctx context.Context, c controlpb.ControlClient, name string, off, length uint64) error {
	stream, err := c.ReadSnapshot(ctx, &controlpb.ReadSnapshotRequest{Name: name, Offset: off, Length: length})
	if err != nil {
		return err
	}
	for {
		ch, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read snapshot %q at %d: %w", name, off, err)
		}
		if err := cp.write(ch.GetOffset(), ch.GetData()); err != nil {
			return err
		}
		cp.progress.add(uint64(len(ch.GetData())))
	}
}

func (cp *cloneCopy) write(off uint64, data []byte) error {
	if off%proto.BlockSize != 0 || len(data)%proto.BlockSize != 0 {
		return fmt.Errorf("snapshot chunk at %d of %d bytes is not block aligned", off, len(data))
	}
	first := off / proto.BlockSize
	for start := 0; start < len(data); {
		// Skip zero blocks; gather a run of non-zero ones (at most 1,024).
		if isZeroBlock(data[start : start+proto.BlockSize]) {
			start += proto.BlockSize
			continue
		}
		end := start + proto.BlockSize
		for end < len(data) && end-start < 1024*proto.BlockSize && !isZeroBlock(data[end:end+proto.BlockSize]) {
			end += proto.BlockSize
		}
		req := proto.Request{Epoch: 1, Op: proto.OpWrite, BlockIndex: first + uint64(start/proto.BlockSize),
			BlockCount: uint32((end - start) / proto.BlockSize), Data: data[start:end]}
		for _, r := range cp.reps {
			req.ID = cp.id()
			if rep := r.runner.Do(req); rep.Status != proto.StatusOK {
				return fmt.Errorf("write clone blocks [%d, +%d): %v %s", req.BlockIndex, req.BlockCount, rep.Status, rep.Err)
			}
		}
		start = end
	}
	return nil
}

func isZeroBlock(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// byteProgress prints bytes done of a total, the rate and an ETA: one
// line redrawn on a terminal, a line every 5 s otherwise.
type byteProgress struct {
	w          io.Writer
	what       string
	total      uint64
	doneBytes  uint64
	start      time.Time
	last       time.Time
	tty, ended bool
}

func newByteProgress(w io.Writer, what string, total uint64) *byteProgress {
	tty := false
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	return &byteProgress{w: w, what: what, total: total, start: time.Now(), tty: tty}
}

func (p *byteProgress) add(n uint64) {
	p.doneBytes += n
	now := time.Now()
	every := 5 * time.Second
	if p.tty {
		every = 200 * time.Millisecond
	}
	if now.Sub(p.last) >= every {
		p.last = now
		p.print(false)
	}
}

// report takes a callback's absolute progress: done of total bytes.
func (p *byteProgress) report(done, total uint64) {
	p.total = total
	p.add(done - p.doneBytes)
}

func (p *byteProgress) done() {
	if !p.ended {
		p.ended = true
		p.print(true)
	}
}

func (p *byteProgress) print(final bool) {
	pct := 100.0
	if p.total > 0 {
		pct = 100 * float64(min(p.doneBytes, p.total)) / float64(p.total)
	}
	const width = 30
	bar := strings.Repeat("#", int(pct/100*width)) + strings.Repeat(".", width-int(pct/100*width))
	secs := max(time.Since(p.start).Seconds(), 1e-3)
	rate := float64(p.doneBytes) / secs
	eta := "-"
	if rate > 0 && p.total > p.doneBytes {
		eta = (time.Duration(float64(p.total-p.doneBytes)/rate) * time.Second).Round(time.Second).String()
	}
	line := fmt.Sprintf("%s [%s] %5.1f%% %s/%s %.1f MB/s eta %s", p.what, bar, pct, humanBytes(p.doneBytes), humanBytes(p.total), rate/1e6, eta)
	switch {
	case p.tty && final:
		fmt.Fprintf(p.w, "\r%s\n", line)
	case p.tty:
		fmt.Fprintf(p.w, "\r%s", line)
	default:
		fmt.Fprintln(p.w, line)
	}
}
