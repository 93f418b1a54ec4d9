package control

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/transports/control/controlpb"
)

// snapReadWindow is how many engine reads of one ReadSnapshot stream are
// in flight at once (each at most maxIOBytes).
const snapReadWindow = 4

// ReadSnapshot streams a snapshot's content in order, reading ahead up to
// snapReadWindow pieces.
func (s *Server) ReadSnapshot(req *controlpb.ReadSnapshotRequest, stream controlpb.Control_ReadSnapshotServer) error {
	off, length := req.GetOffset(), req.GetLength()
	switch {
	case req.GetName() == "":
		return status.Error(codes.InvalidArgument, "read snapshot: name a snapshot")
	case off%proto.BlockSize != 0 || length%proto.BlockSize != 0:
		return status.Errorf(codes.InvalidArgument, "read snapshot: offset %d and length %d must be multiples of %d", off, length, proto.BlockSize)
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	type piece struct {
		off  uint64
		data []byte
		err  error
	}
	var pending []chan piece
	start := func(at, n uint64) {
		ch := make(chan piece, 1)
		pending = append(pending, ch)
		go func() {
			rep, err := s.d.Admin(ctx, engine.AdminRequest{Op: engine.AdminReadSnapshot, Name: req.GetName(),
				BlockIndex: at / proto.BlockSize, BlockCount: uint32(n / proto.BlockSize)})
			ch <- piece{off: at, data: rep.Data, err: err}
		}()
	}
	next, end := off, off+length
	for next < end || len(pending) > 0 {
		for next < end && len(pending) < snapReadWindow {
			n := min(uint64(maxIOBytes), end-next)
			start(next, n)
			next += n
		}
		p := <-pending[0]
		pending = pending[1:]
		if p.err != nil {
			return toStatus(p.err)
		}
		if err := stream.Send(&controlpb.ReadSnapshotChunk{Offset: p.off, Data: p.data}); err != nil {
			return err
		}
	}
	return nil
}

// WriteZeroes makes a range read as zeros.
func (s *Server) WriteZeroes(ctx context.Context, req *controlpb.WriteZeroesRequest) (*controlpb.Empty, error) {
	return &controlpb.Empty{}, toStatus(s.v.WriteZeroes(ctx, req.GetOffset(), req.GetLength(), false))
}
