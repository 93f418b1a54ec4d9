package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/replica"
	"github.com/drover-io/drover/transports/backingimage"
	"github.com/drover-io/drover/transports/replicadir"
)

func init() { subcommands = append(subcommands, newBackingImageCmd) }

const backingImageLong = `Manage this node's backing images: read-only base images (a raw file, or a
qcow2 converted with qemu-img) that volumes are created on.

Each image is stored once per node in --images-dir. A replica created on it
(drover dev --backing-image NAME) links that one copy as the bottom layer of
its chain: reads fall through to it, verified block by block against its
CRC32C index, and writes land in the replica's own layers, never in the image.
Linking a new replica first verifies the whole image against the SHA-256
recorded when it was created. A replica rebuilt on a node without the image
gets a private copy of that layer from its source.

rm refuses an image that backs replicas which still exist (delete those
volumes, or merge the image into them: drover snapshot rm backing:NAME).`

const backingImageExample = `  drover backing-image create ubuntu --from jammy.qcow2
  drover backing-image ls
  drover dev --data-dir /var/tmp/vm1 --backing-image ubuntu --size 20GiB
  drover backing-image verify ubuntu
  drover backing-image rm ubuntu`

// backingFlags are --backing-image and --images-dir.
type backingFlags struct {
	image, dir string
}

// backingRef names an image in a store.
type backingRef struct {
	store backingimage.Store
	image string
}

func (f *backingFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.image, "backing-image", "", "create the volume on this backing image (see drover backing-image)")
	cmd.Flags().StringVar(&f.dir, "images-dir", "", "backing images directory (default $XDG_DATA_HOME/drover/images)")
}

func (f *backingFlags) store() (backingimage.Store, error) {
	if f.dir != "" {
		return backingimage.Store{Dir: f.dir}, nil
	}
	d, err := defaultDataDir()
	if err != nil {
		return backingimage.Store{}, err
	}
	return backingimage.Store{Dir: filepath.Join(filepath.Dir(d), "images")}, nil
}

func (f *backingFlags) backing() (*backingRef, error) {
	if f.image == "" {
		return nil, nil
	}
	st, err := f.store()
	if err != nil {
		return nil, err
	}
	return &backingRef{store: st, image: f.image}, nil
}

// openReplicaDirOn opens the replica in dir; a new one is created on the
// backing image when b is set (its size is at least the image's).
// overProvisioningPercent limits its size (openReplicaDirLimited).
func openReplicaDirOn(ctx context.Context, dir string, id proto.ReplicaID, createBytes uint64, b *backingRef, overProvisioningPercent int) (*replicaDir, error) {
	if b == nil {
		return openReplicaDirLimited(dir, id, createBytes, overProvisioningPercent)
	}
	if _, err := os.Stat(filepath.Join(dir, "meta")); err == nil {
		return openReplicaDirLimited(dir, id, createBytes, overProvisioningPercent) // created before: its chain says what it holds
	}
	if img, err := b.store.Get(b.image); err == nil {
		// Checked before Link puts anything in dir.
		if err := checkSizeAt(dir, max(createBytes, img.SizeBytes), overProvisioningPercent); err != nil {
			return nil, err
		}
	}
	img, err := b.store.Link(ctx, b.image, dir)
	if err != nil {
		return nil, err
	}
	rd, err := replicadir.Open(replicadir.Config{Dir: dir, ID: id, CreateSizeBytes: max(createBytes, img.SizeBytes),
		Backing: &replica.Backing{Image: b.image, SHA256: img.SHA256}, CheckSize: true, OverProvisioningPercent: overProvisioningPercent})
	if err != nil {
		return nil, fmt.Errorf("replica %s on backing image %q: %w", dir, b.image, err)
	}
	return &replicaDir{runner: rd.Runner, store: rd.Store}, nil
}

func newBackingImageCmd() *cobra.Command {
	var bf backingFlags
	cmd := &cobra.Command{Use: "backing-image", Short: "Create, list, verify and remove backing images", Long: backingImageLong,
		Example: backingImageExample, Args: cobra.NoArgs}
	cmd.PersistentFlags().StringVar(&bf.dir, "images-dir", "", "backing images directory (default $XDG_DATA_HOME/drover/images)")
	var from string
	create := &cobra.Command{Use: "create NAME --from FILE", Short: "Store a raw or qcow2 image as a backing image", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := bf.store()
			if err != nil {
				return err
			}
			p := newByteProgress(cmd.OutOrStdout(), "import "+args[0], 0)
			img, err := st.Create(cmd.Context(), args[0], from, p.report)
			if err != nil {
				return err
			}
			p.done()
			fmt.Fprintf(cmd.OutOrStdout(), "backing image %s: %s (%d bytes, %s) sha256 %s\n", img.Name, humanBytes(img.SizeBytes), img.SizeBytes, img.Format, img.SHA256)
			return nil
		}}
	create.Flags().StringVar(&from, "from", "", "source image file (raw or qcow2)")
	_ = create.MarkFlagRequired("from")
	ls := &cobra.Command{Use: "ls", Short: "List backing images with their size, checksum and users", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := bf.store()
			if err != nil {
				return err
			}
			imgs, err := st.List()
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tSIZE\tFORMAT\tSHA256\tUSERS")
			for _, img := range imgs {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", img.Name, humanBytes(img.SizeBytes), img.Format, img.SHA256[:16], usersText(img.Users))
			}
			return w.Flush()
		}}
	verify := &cobra.Command{Use: "verify NAME", Short: "Check every block of an image and its SHA-256", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := bf.store()
			if err != nil {
				return err
			}
			p := newByteProgress(cmd.OutOrStdout(), "verify "+args[0], 0)
			if err := st.Verify(cmd.Context(), args[0], p.report); err != nil {
				return err
			}
			p.done()
			fmt.Fprintf(cmd.OutOrStdout(), "backing image %s: ok\n", args[0])
			return nil
		}}
	rm := &cobra.Command{Use: "rm NAME", Short: "Remove a backing image no replica uses", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := bf.store()
			if err != nil {
				return err
			}
			return st.Remove(args[0])
		}}
	cmd.AddCommand(create, ls, verify, rm)
	return cmd
}

func usersText(users []string) string {
	if len(users) == 0 {
		return "-"
	}
	return fmt.Sprintf("%d: %s", len(users), strings.Join(users, ","))
}
