package control

import (
	"context"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/transports/control/controlpb"
)

// Expand grows the volume online. With allow_shrink, a smaller size is a
// shrink: the engine allows it only while the volume is detached and when
// no layer holds data at or beyond the new end.
func (s *Server) Expand(ctx context.Context, req *controlpb.ExpandRequest) (*controlpb.Empty, error) {
	op := engine.AdminExpand
	if req.GetAllowShrink() && req.GetSizeBytes() < s.d.SizeBytes() {
		op = engine.AdminShrink
	}
	_, err := s.admin(ctx, engine.AdminRequest{Op: op, SizeBytes: req.GetSizeBytes()})
	return &controlpb.Empty{}, err
}
