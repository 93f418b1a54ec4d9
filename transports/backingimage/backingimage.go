// Package backingimage keeps the backing images of one node: read-only
// base images that volumes are created on. Each image is stored once per
// node, in the layer format of transports/filestore, and every replica on
// the node created on it links that one copy as the bottom layer of its
// chain (core/replica: Config.Backing). Replicas read it, verified block
// by block against its CRC32C index like any layer; they never write it.
//
// Layout of an images directory:
//
//	<name>/image.json        name, size, SHA-256 of the content, source, time
//	<name>/layer/layer-1.*   the image as filestore layer 1 (sparse data, index)
//	<name>/users/<id>        a symlink to each replica directory created on it
//
// A replica directory created on an image holds layer-1.data and
// layer-1.index as symlinks into <name>/layer. An image is in use while a
// user symlink names a directory whose layer-1.data still resolves into
// it; Remove refuses such an image.
package backingimage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/replica"
	"github.com/drover-io/drover/core/store"
	"github.com/drover-io/drover/transports/filestore"
)

// ErrInUse: the image backs replicas that still exist.
var ErrInUse = errors.New("backing image in use")

// ErrNotFound: no image of that name.
var ErrNotFound = errors.New("no such backing image")

// Image describes one stored image.
type Image struct {
	Name      string    `json:"name"`
	SizeBytes uint64    `json:"size_bytes"`
	SHA256    string    `json:"sha256"`
	Source    string    `json:"source"`
	Format    string    `json:"format"`
	Created   time.Time `json:"created"`
	// Users are the replica directories created on it (filled by List).
	Users []string `json:"-"`
}

// Progress reports bytes done of a total while an image is created or
// verified.
type Progress func(done, total uint64)

// Store is one node's images directory.
type Store struct{ Dir string }

func (s Store) imageDir(name string) string { return filepath.Join(s.Dir, name) }

func (s Store) layerPath(name, suffix string) string {
	return filepath.Join(s.imageDir(name), "layer", fmt.Sprintf("layer-%d.%s", replica.BackingLayerID, suffix))
}

// checkName allows names that are safe as directory names and layer names.
func checkName(name string) error {
	if name == "" || len(name) > 200 || strings.ContainsAny(name, "/\\\x00") || name == "." || name == ".." || strings.HasPrefix(name, ".") {
		return fmt.Errorf("backing image name %q: use 1..200 characters, no slash, not starting with a dot", name)
	}
	return nil
}

// Create stores the image at src (raw, or qcow2 converted with qemu-img)
// as name. The size is rounded up to 4 KiB; zero blocks are holes.
func (s Store) Create(ctx context.Context, name, src string, progress Progress) (*Image, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	if _, err := os.Stat(s.imageDir(name)); err == nil {
		return nil, fmt.Errorf("backing image %q already exists", name)
	}
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(s.Dir, "."+name+".partial-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	format, err := detectFormat(src)
	if err != nil {
		return nil, err
	}
	raw := src
	if format == "qcow2" {
		raw = filepath.Join(tmp, "converted.raw")
		out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", src, raw).CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("qemu-img convert %s: %v: %s", src, err, bytes.TrimSpace(out))
		}
	}
	img := &Image{Name: name, Source: src, Format: format, Created: time.Now().UTC()}
	if err := writeLayer(ctx, raw, filepath.Join(tmp, "layer"), img, progress); err != nil {
		return nil, err
	}
	os.Remove(filepath.Join(tmp, "converted.raw"))
	if err := os.Mkdir(filepath.Join(tmp, "users"), 0o755); err != nil {
		return nil, err
	}
	js, _ := json.MarshalIndent(img, "", "  ")
	if err := os.WriteFile(filepath.Join(tmp, "image.json"), append(js, '\n'), 0o644); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, s.imageDir(name)); err != nil {
		return nil, fmt.Errorf("backing image %q: %w", name, err)
	}
	return img, nil
}

func detectFormat(src string) (string, error) {
	f, err := os.Open(src)
	if err != nil {
		return "", fmt.Errorf("backing image source: %w", err)
	}
	defer f.Close()
	magic := make([]byte, 4)
	if _, err := io.ReadFull(f, magic); err == nil && string(magic) == "QFI\xfb" {
		return "qcow2", nil
	}
	return "raw", nil
}

// writeLayer copies raw into a filestore layer in dir: non-zero blocks as
// data with their CRC32C, the rest holes; it fills img's size and SHA-256.
func writeLayer(ctx context.Context, raw, dir string, img *Image, progress Progress) error {
	in, err := os.Open(raw)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	total := uint64(st.Size())
	if total == 0 {
		return fmt.Errorf("backing image source %s is empty", raw)
	}
	img.SizeBytes = (total + proto.BlockSize - 1) / proto.BlockSize * proto.BlockSize
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	fs, err := filestore.Open(dir)
	if err != nil {
		return err
	}
	defer fs.Close()
	id := replica.BackingLayerID
	exec := func(io store.IO) error {
		if c := fs.Execute(io); c.Err != store.OK {
			return fmt.Errorf("backing image layer: %v %v %s", io.Kind, c.Err, c.Detail)
		}
		return nil
	}
	if err := exec(store.IO{Kind: store.CreateLayer, Layer: id}); err != nil {
		return err
	}
	h := sha256.New()
	buf := make([]byte, 1<<20)
	var entries []proto.BlockState
	for off := uint64(0); off < img.SizeBytes; {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := io.ReadFull(in, buf)
		if err == io.ErrUnexpectedEOF || err == io.EOF {
			// Pad the last block with zeros.
			pad := (uint64(n) + proto.BlockSize - 1) / proto.BlockSize * proto.BlockSize
			clear(buf[n:pad])
			n = int(pad)
		} else if err != nil {
			return err
		}
		if n == 0 {
			break
		}
		h.Write(buf[:n])
		for i := 0; i < n; i += proto.BlockSize {
			blk := buf[i : i+proto.BlockSize]
			if isZero(blk) {
				continue
			}
			b := (off + uint64(i)) / proto.BlockSize
			if err := exec(store.IO{Kind: store.WriteData, Layer: id, BlockIndex: b, Data: blk}); err != nil {
				return err
			}
			entries = append(entries, proto.BlockState{BlockIndex: b, Kind: proto.BlockData, CRC: replica.CRC(blk)})
		}
		off += uint64(n)
		if progress != nil {
			progress(min(off, total), total)
		}
	}
	for _, io := range []store.IO{{Kind: store.SyncData, Layer: id}, {Kind: store.WriteIndex, Layer: id, Entries: entries},
		{Kind: store.SyncIndex, Layer: id}} {
		if err := exec(io); err != nil {
			return err
		}
	}
	img.SHA256 = hex.EncodeToString(h.Sum(nil))
	return nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Get reads one image's description.
func (s Store) Get(name string) (*Image, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	js, err := os.ReadFile(filepath.Join(s.imageDir(name), "image.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %q in %s", ErrNotFound, name, s.Dir)
	}
	if err != nil {
		return nil, err
	}
	var img Image
	if err := json.Unmarshal(js, &img); err != nil {
		return nil, fmt.Errorf("backing image %q: image.json: %w", name, err)
	}
	img.Users = s.users(name)
	return &img, nil
}

// List describes every image, by name.
func (s Store) List() ([]*Image, error) {
	ents, err := os.ReadDir(s.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []*Image
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if img, err := s.Get(e.Name()); err == nil {
			out = append(out, img)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// users returns the replica directories that still use the image (their
// layer-1.data resolves into it), forgetting stale records.
func (s Store) users(name string) []string {
	dir := filepath.Join(s.imageDir(name), "users")
	ents, _ := os.ReadDir(dir)
	data, err := filepath.EvalSymlinks(s.layerPath(name, "data"))
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		rec := filepath.Join(dir, e.Name())
		target, err := os.Readlink(rec)
		if err != nil {
			continue
		}
		got, err := filepath.EvalSymlinks(filepath.Join(target, fmt.Sprintf("layer-%d.data", replica.BackingLayerID)))
		if err != nil || got != data {
			os.Remove(rec) // the replica is gone or no longer uses the image
			continue
		}
		out = append(out, target)
	}
	sort.Strings(out)
	return out
}

// Remove deletes an image nothing uses.
func (s Store) Remove(name string) error {
	img, err := s.Get(name)
	if err != nil {
		return err
	}
	if len(img.Users) > 0 {
		return fmt.Errorf("%w: %q backs %d replica(s): %s (delete those volumes, or merge the image into them with drover snapshot rm %s%s)",
			ErrInUse, name, len(img.Users), strings.Join(img.Users, ", "), proto.BackingPrefix, name)
	}
	return os.RemoveAll(s.imageDir(name))
}

// Verify reads the image back through its index (every block checked
// against its CRC32C) and compares the SHA-256 of the content with the
// one recorded when it was created.
func (s Store) Verify(ctx context.Context, name string, progress Progress) error {
	img, err := s.Get(name)
	if err != nil {
		return err
	}
	fs, err := filestore.Open(filepath.Join(s.imageDir(name), "layer"))
	if err != nil {
		return err
	}
	defer fs.Close()
	h := sha256.New()
	const step = 256
	blocks := img.SizeBytes / proto.BlockSize
	for b := uint64(0); b < blocks; b += step {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(step, blocks-b)
		c := fs.Execute(store.IO{Kind: store.ReadData, Layer: replica.BackingLayerID, BlockIndex: b, BlockCount: n})
		if c.Err != store.OK {
			return fmt.Errorf("backing image %q: read blocks [%d, +%d): %v %s", name, b, n, c.Err, c.Detail)
		}
		for i := uint64(0); i < n; i++ {
			blk := c.Data[i*proto.BlockSize : (i+1)*proto.BlockSize]
			e := c.Entries[i]
			switch {
			case e.Kind == proto.BlockData && replica.CRC(blk) != e.CRC:
				return fmt.Errorf("backing image %q: block %d fails its checksum", name, b+i)
			case e.Kind != proto.BlockData && !isZero(blk):
				return fmt.Errorf("backing image %q: block %d holds data its index does not list", name, b+i)
			}
		}
		h.Write(c.Data)
		if progress != nil {
			progress((b+n)*proto.BlockSize, img.SizeBytes)
		}
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != img.SHA256 {
		return fmt.Errorf("backing image %q: SHA-256 %s, recorded %s", name, got, img.SHA256)
	}
	return nil
}

// Link prepares a new replica directory to be created on the image:
// verifies the image, links its layer into replicaDir (which must not
// hold a replica yet) and records replicaDir as a user.
func (s Store) Link(ctx context.Context, name, replicaDir string) (*Image, error) {
	img, err := s.Get(name)
	if err != nil {
		return nil, err
	}
	if err := s.Verify(ctx, name, nil); err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(replicaDir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, err
	}
	for _, suffix := range []string{"data", "index"} {
		target, err := filepath.Abs(s.layerPath(name, suffix))
		if err != nil {
			return nil, err
		}
		link := filepath.Join(abs, fmt.Sprintf("layer-%d.%s", replica.BackingLayerID, suffix))
		if fi, err := os.Lstat(link); err == nil && fi.Mode()&os.ModeSymlink != 0 {
			os.Remove(link) // left by an attempt that stopped before the replica existed
		}
		if err := os.Symlink(target, link); err != nil {
			return nil, fmt.Errorf("link backing image %q into %s: %w", name, abs, err)
		}
	}
	sum := sha256.Sum256([]byte(abs))
	rec := filepath.Join(s.imageDir(name), "users", hex.EncodeToString(sum[:8]))
	os.Remove(rec)
	if err := os.Symlink(abs, rec); err != nil {
		return nil, fmt.Errorf("record %s as a user of %q: %w", abs, name, err)
	}
	return img, nil
}
