package fuzz

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"github.com/drover-io/drover/core/proto"
)

func wireSeeds() ([]proto.Request, []proto.Reply) {
	data := bytes.Repeat([]byte{0x5a}, proto.BlockSize)
	mem := &proto.Membership{Gen: 2, Epoch: 3, Members: []proto.Member{{ID: "a", Mode: proto.ModeRW}, {ID: "b", Mode: proto.ModeWO}}}
	reqs := []proto.Request{
		{ID: 1, Epoch: 3, Op: proto.OpOpen},
		{ID: 2, Epoch: 3, Op: proto.OpWrite, BlockIndex: 8, BlockCount: 1, Data: data, FUA: true, Seq: 4},
		{ID: 3, Epoch: 3, Op: proto.OpSetMembership, Membership: mem, Chain: []string{"s1", "s2"}, Name: "n", Name2: "m"},
		{ID: 4, Epoch: 3, Op: proto.OpLayerWrite, BlockIndex: 8, BlockCount: 1, Data: data,
			Blocks: []proto.BlockState{{BlockIndex: 8, Kind: proto.BlockData, CRC: 1}}},
	}
	reps := []proto.Reply{
		{ID: 1, Info: &proto.Info{ID: "a", SizeBytes: 1 << 20, Epoch: 3, Chain: []string{"s1"}, Membership: mem,
			Dirty: true, Recovered: []proto.Extent{{BlockIndex: 0, BlockCount: 8}}}},
		{ID: 2, Data: data},
		{ID: 3, Status: proto.StatusIOError, Err: "disk on fire", Extents: []proto.Extent{{BlockIndex: 1, BlockCount: 2}},
			Blocks: []proto.BlockState{{BlockIndex: 1, Kind: proto.BlockZero}}},
	}
	return reqs, reps
}

// checkWireErr requires a decode failure to be one of the wire package's
// typed errors.
func checkWireErr(t *testing.T, err error) {
	if !errors.Is(err, proto.ErrMalformed) && !errors.Is(err, proto.ErrFrameTooLarge) {
		t.Fatalf("decode error is not typed: %v", err)
	}
}

// FuzzDecodeRequest: DecodeRequest never panics, fails with a typed error,
// and what it accepts re-encodes to the same body.
func FuzzDecodeRequest(f *testing.F) {
	reqs, reps := wireSeeds()
	for i := range reqs {
		body := proto.AppendRequestFrame(nil, &reqs[i])[proto.FrameHeaderBytes:]
		f.Add(body)
		f.Add(body[:len(body)/3])
	}
	f.Add(proto.AppendReplyFrame(nil, &reps[0])[proto.FrameHeaderBytes:])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, body []byte) {
		q, err := proto.DecodeRequest(body)
		if err != nil {
			checkWireErr(t, err)
			return
		}
		if enc := proto.AppendRequestFrame(nil, &q)[proto.FrameHeaderBytes:]; !bytes.Equal(enc, body) {
			t.Fatalf("accepted request re-encodes differently:\n in %x\nout %x", body, enc)
		}
	})
}

// FuzzDecodeReply: DecodeReply never panics, fails with a typed error, and
// what it accepts re-encodes to the same body.
func FuzzDecodeReply(f *testing.F) {
	reqs, reps := wireSeeds()
	for i := range reps {
		body := proto.AppendReplyFrame(nil, &reps[i])[proto.FrameHeaderBytes:]
		f.Add(body)
		f.Add(body[:len(body)/3])
	}
	f.Add(proto.AppendRequestFrame(nil, &reqs[1])[proto.FrameHeaderBytes:])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, body []byte) {
		p, err := proto.DecodeReply(body)
		if err != nil {
			checkWireErr(t, err)
			return
		}
		if enc := proto.AppendReplyFrame(nil, &p)[proto.FrameHeaderBytes:]; !bytes.Equal(enc, body) {
			t.Fatalf("accepted reply re-encodes differently:\n in %x\nout %x", body, enc)
		}
	})
}

// FuzzReadFrame: ReadFrame and ReadHello never panic on a hostile stream
// and never return a body over MaxFrameBytes.
func FuzzReadFrame(f *testing.F) {
	reqs, _ := wireSeeds()
	hello := proto.AppendHello(nil, proto.Hello{Version: proto.WireVersion, Role: proto.RoleEngine, ReplicaID: "a"})
	f.Add(proto.AppendRequestFrame(hello, &reqs[1]))
	f.Add([]byte("DRVW\x02\x00\x01\x00"))
	// A layer write large enough for ReadFrameSplit to read its data apart.
	big := &proto.Request{ID: 9, Epoch: 3, Op: proto.OpLayerWrite, BlockCount: proto.SplitDataBytes / proto.BlockSize,
		Data: bytes.Repeat([]byte{1}, proto.SplitDataBytes), Blocks: make([]proto.BlockState, proto.SplitDataBytes/proto.BlockSize)}
	f.Add(proto.AppendRequestFrame(append([]byte(nil), hello...), big))
	f.Fuzz(func(t *testing.T, stream []byte) {
		r := bytes.NewReader(stream)
		if _, err := proto.ReadHello(r); err != nil {
			return
		}
		rest := stream[len(stream)-r.Len():]
		for {
			body, err := proto.ReadFrame(r, nil)
			if err != nil {
				break
			}
			if len(body) > proto.MaxFrameBytes {
				t.Fatalf("body of %d bytes", len(body))
			}
			_, _ = proto.DecodeRequest(body)
		}
		checkReadFrameSplit(t, rest)
	})
}

// checkReadFrameSplit requires ReadFrameSplit and DecodeRequestSplit to
// accept exactly the frames ReadFrame and DecodeRequest accept, with the
// same result, on the frames of stream.
func checkReadFrameSplit(t *testing.T, stream []byte) {
	r, rs := bytes.NewReader(stream), bytes.NewReader(stream)
	for {
		body, err := proto.ReadFrame(r, nil)
		head, data, errSplit := proto.ReadFrameSplit(rs, nil, func(n int) []byte { return make([]byte, n) })
		if (err == nil) != (errSplit == nil) {
			t.Fatalf("ReadFrame: %v, ReadFrameSplit: %v", err, errSplit)
		}
		if err != nil {
			return
		}
		if data == nil && !bytes.Equal(head, body) || data != nil && !bytes.Equal(append(head[:len(head):len(head)], data...), body) {
			t.Fatalf("ReadFrameSplit read other bytes")
		}
		req, err := proto.DecodeRequest(body)
		reqSplit, errSplit := proto.DecodeRequestSplit(head, data)
		if (err == nil) != (errSplit == nil) || err == nil && !reflect.DeepEqual(req, reqSplit) {
			t.Fatalf("DecodeRequest: %v, DecodeRequestSplit: %v (or other results)", err, errSplit)
		}
	}
}
