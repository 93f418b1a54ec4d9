package control

import (
	"context"
	"sort"
	"time"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/transports/control/controlpb"
)

// SnapshotCreate takes a snapshot. Its creation time comes from this
// process's clock (the core has none) and is kept, with the labels, in
// every replica's metadata.
func (s *Server) SnapshotCreate(ctx context.Context, req *controlpb.SnapshotRequest) (*controlpb.Empty, error) {
	attrs := &proto.SnapshotAttrs{CreatedUnixNano: time.Now().UnixNano()}
	for k, v := range req.GetLabels() {
		attrs.Labels = append(attrs.Labels, proto.Label{Key: k, Value: v})
	}
	sort.Slice(attrs.Labels, func(i, j int) bool { return attrs.Labels[i].Key < attrs.Labels[j].Key })
	_, err := s.admin(ctx, engine.AdminRequest{Op: engine.AdminSnapshot, Name: req.GetName(), Attrs: attrs})
	return &controlpb.Empty{}, err
}

// SnapshotList lists snapshots oldest first, and every layer with its
// attributes and sizes (the head last, unnamed).
func (s *Server) SnapshotList(ctx context.Context, _ *controlpb.Empty) (*controlpb.SnapshotListResponse, error) {
	rep, err := s.admin(ctx, engine.AdminRequest{Op: engine.AdminListSnapshots})
	if err != nil {
		return nil, err
	}
	out := &controlpb.SnapshotListResponse{}
	for _, l := range rep.Snapshots {
		if l.Name != "" {
			out.Names = append(out.Names, l.Name)
		}
		info := &controlpb.SnapshotInfo{Name: l.Name, CreatedUnixNano: l.Attrs.CreatedUnixNano,
			SizeBytes: l.DataBlocks * proto.BlockSize, ZeroBlocks: l.ZeroBlocks, ReclaimBytes: l.ShadowedBlocks * proto.BlockSize}
		if len(l.Attrs.Labels) > 0 {
			info.Labels = map[string]string{}
			for _, lb := range l.Attrs.Labels {
				info.Labels[lb.Key] = lb.Value
			}
		}
		out.Snapshots = append(out.Snapshots, info)
	}
	return out, nil
}
