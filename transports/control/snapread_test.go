package control

import (
	"bytes"
	"context"
	"io"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/drover-io/drover/transports/control/controlpb"
)

// readSnap reads a whole range through the ReadSnapshot stream.
func readSnap(ctx context.Context, c controlpb.ControlClient, name string, off, length uint64) ([]byte, error) {
	st, err := c.ReadSnapshot(ctx, &controlpb.ReadSnapshotRequest{Name: name, Offset: off, Length: length})
	if err != nil {
		return nil, err
	}
	var out []byte
	for {
		ch, err := st.Recv()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if ch.GetOffset() != off+uint64(len(out)) {
			return nil, status.Errorf(codes.Internal, "piece at %d, want %d", ch.GetOffset(), off+uint64(len(out)))
		}
		out = append(out, ch.GetData()...)
	}
}

// TestReadSnapshotStream: a snapshot reads as it was when taken, in order,
// across several 4 MiB pieces, while the head moves on; WriteZeroes zeroes.
func TestReadSnapshotStream(t *testing.T) {
	c := newTestServer(t)
	ctx := context.Background()
	// The volume is 4 MiB: grow it so that a read spans several pieces.
	if _, err := c.Expand(ctx, &controlpb.ExpandRequest{SizeBytes: 12 << 20}); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 12<<20)
	for i := range want {
		want[i] = byte(i/4096 + 1)
	}
	for off := 0; off < len(want); off += 4 << 20 {
		if _, err := c.Write(ctx, &controlpb.WriteRequest{Offset: uint64(off), Data: want[off : off+4<<20]}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.SnapshotCreate(ctx, &controlpb.SnapshotRequest{Name: "b1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteZeroes(ctx, &controlpb.WriteZeroesRequest{Offset: 0, Length: 8 << 20}); err != nil {
		t.Fatal(err)
	}
	got, err := readSnap(ctx, c, "b1", 0, 12<<20)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("snapshot b1: %d bytes, equal %v, %v", len(got), bytes.Equal(got, want), err)
	}
	got, err = readSnap(ctx, c, "b1", 4096, 8192)
	if err != nil || !bytes.Equal(got, want[4096:12288]) {
		t.Fatalf("snapshot b1 [4096, +8192): %v", err)
	}
	head, err := c.Read(ctx, &controlpb.ReadRequest{Offset: 0, Length: 4096})
	if err != nil || !bytes.Equal(head.GetData(), make([]byte, 4096)) {
		t.Fatalf("head after WriteZeroes: %v", err)
	}
	for _, bad := range []struct {
		name     string
		off, n   uint64
		wantCode codes.Code
	}{{"nope", 0, 4096, codes.NotFound}, {"", 0, 4096, codes.InvalidArgument}, {"b1", 1, 4096, codes.InvalidArgument},
		{"b1", 12 << 20, 4096, codes.InvalidArgument}} {
		if _, err := readSnap(ctx, c, bad.name, bad.off, bad.n); status.Code(err) != bad.wantCode {
			t.Errorf("read snapshot %q at %d: %v, want %v", bad.name, bad.off, err, bad.wantCode)
		}
	}
}
