package replica

import (
	"fmt"
	"strings"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/store"
)

// BackingLayerID is the store layer a replica created on a backing image
// finds the image in. The driver provides it before the replica loads (a
// production store links it to the one copy of the image on the node);
// the replica only ever reads it.
const BackingLayerID store.LayerID = 1

// Backing names the backing image a new replica is created on.
type Backing struct {
	// Image is the image's name; the layer is called proto.BackingPrefix+Image.
	Image string
	// SHA256 (hex, optional) is the image content's checksum: recorded as
	// the layer's label "sha256" and reported in Info.BackingSHA256, so an
	// engine can tell replicas created on different images of one name.
	SHA256 string
}

// backingSHA256Label is the label of a shared backing layer that holds its
// image's SHA-256.
const backingSHA256Label = "sha256"

// backingSHA256 returns the checksum recorded on the shared backing layer,
// or "".
func (r *Replica) backingSHA256() string {
	if len(r.layers) == 0 || !sharedLayer(r.layers[0]) {
		return ""
	}
	for _, l := range r.layers[0].meta.Attrs.Labels {
		if l.Key == backingSHA256Label {
			return l.Value
		}
	}
	return ""
}

// sharedLayer reports whether l is a backing image the store shares with
// other replicas: the bottom layer a replica was created on. (A layer of
// the same name a rebuild created elsewhere holds a private copy and has
// another id: ids start at 2 in replicas created without an image.)
func sharedLayer(l *layer) bool {
	return l.meta.ID == BackingLayerID && strings.HasPrefix(l.meta.Name, proto.BackingPrefix)
}

// createOnBacking writes the first metadata of a replica whose chain is
// the backing image (layer BackingLayerID, read-only) under a new head,
// then loads both indexes as a restart would.
func (r *Replica) createOnBacking(size uint64) {
	b := r.cfg.Backing
	if b.Image == "" || len(b.Image)+len(proto.BackingPrefix) > maxNameBytes {
		r.fail(fmt.Sprintf("replica %s: bad backing image name %q", r.cfg.ID, b.Image))
		return
	}
	r.meta = Meta{ID: r.cfg.ID, SizeBytes: size, NextLayerID: BackingLayerID + 2,
		Layers: []LayerMeta{{ID: BackingLayerID, Name: proto.BackingPrefix + b.Image}, {ID: BackingLayerID + 1}}}
	if b.SHA256 != "" {
		r.meta.Layers[0].Attrs.Labels = []proto.Label{{Key: backingSHA256Label, Value: b.SHA256}}
	}
	r.layers = nil
	for _, lm := range r.meta.Layers {
		r.layers = append(r.layers, &layer{meta: lm})
	}
	head := BackingLayerID + 1
	r.issue(store.IO{Kind: store.CreateLayer, Layer: head}, func(c store.Completion) {
		if c.Err != store.OK {
			r.fail(fmt.Sprintf("create head layer: %v %s", c.Err, c.Detail))
			return
		}
		r.writeMeta(func(ok bool) {
			if ok {
				r.loadIndexes(0)
			}
		})
	})
}
