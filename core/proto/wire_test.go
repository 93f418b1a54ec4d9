package proto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"testing"
)

// wireSamples returns requests and replies using every field, for round
// trip tests here and seed corpora in fuzz/.
func wireSamples() ([]Request, []Reply) {
	data := bytes.Repeat([]byte{0xab}, 2*BlockSize)
	mem := &Membership{Gen: 3, Epoch: 7, Members: []Member{{ID: "r1", Mode: ModeRW}, {ID: "r2", Mode: ModeWO}}}
	born := &Membership{Gen: 4, Epoch: 8, Members: []Member{{ID: "r1", Mode: ModeRW, Created: 5}, {ID: "r3", Mode: ModeWO}},
		Prev: []Member{{ID: "r1", Mode: ModeRW, Created: 5}, {ID: "r2", Mode: ModeRW, Created: 6}}}
	reqs := []Request{
		{ID: 1, Epoch: 7, Op: OpOpen},
		{ID: 2, Epoch: 7, Op: OpWrite, BlockIndex: 99, BlockCount: 2, Data: data, FUA: true, Seq: 12},
		{ID: 3, Epoch: 7, Op: OpSetMembership, Membership: mem},
		{ID: 8, Epoch: 8, Op: OpSetMembership, Membership: born},
		{ID: 4, Epoch: 7, Op: OpSetChain, Chain: []string{"a", "b"}, Name: "x", Name2: "y", SizeBytes: 1 << 40},
		{ID: 5, Epoch: 7, Op: OpLayerWrite, BlockIndex: 4, BlockCount: 2, Data: data,
			Blocks: []BlockState{{BlockIndex: 4, Kind: BlockData, CRC: 77}, {BlockIndex: 5, Kind: BlockZero}}},
		{ID: 6, Epoch: 7, Op: OpSnapshot, Name: "s1", Seq: 4,
			Attrs: &SnapshotAttrs{CreatedUnixNano: 1_700_000_000_123_456_789, Labels: []Label{{"app", "db"}, {"k", ""}}}},
		{ID: 7, Epoch: 7, Op: OpMergeSnapshot, Name: "s1", BlockIndex: 1 << 16, BlockCount: 1 << 16},
	}
	reps := []Reply{
		{ID: 1, Info: &Info{ID: "r1", SizeBytes: 1 << 30, Epoch: 7, FlushedSeq: 9, Chain: []string{"s"},
			Membership: mem, ActiveRegions: 2, Dirty: true, Opened: true, BackingSHA256: "ab12", Recovered: []Extent{{BlockIndex: 0, BlockCount: 1024}}}},
		{ID: 2, Data: data},
		{ID: 6, Info: &Info{ID: "r2", SizeBytes: 1 << 30, Epoch: 8, FUASeq: 3, Created: 6, Membership: born}},
		{ID: 3, Status: StatusCorrupt, Err: "block 5: checksum", BlockIndex: 5},
		{ID: 4, Extents: []Extent{{1, 2}, {10, 20}}, Blocks: []BlockState{{BlockIndex: 1, Kind: BlockData, CRC: 3}}},
		{ID: 5, Snapshots: []SnapshotInfo{
			{Name: "s1", Attrs: SnapshotAttrs{CreatedUnixNano: -1, Labels: []Label{{"a", "b"}}}, DataBlocks: 10, ZeroBlocks: 2, ShadowedBlocks: 3},
			{Name: "", DataBlocks: 1}}},
	}
	return reqs, reps
}

func TestWireRoundTrip(t *testing.T) {
	reqs, reps := wireSamples()
	var stream []byte
	for i := range reqs {
		stream = AppendRequestFrame(stream, &reqs[i])
	}
	for i := range reps {
		stream = AppendReplyFrame(stream, &reps[i])
	}
	r := bytes.NewReader(stream)
	for _, want := range reqs {
		body, err := ReadFrame(r, nil)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeRequest(body)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("request: got %+v, %v\nwant %+v", got, err, want)
		}
	}
	for _, want := range reps {
		body, err := ReadFrame(r, make([]byte, 0, 64<<10))
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeReply(body)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("reply: got %+v, %v\nwant %+v", got, err, want)
		}
	}
	if _, err := ReadFrame(r, nil); err != io.EOF {
		t.Fatalf("end of stream: %v", err)
	}
}

func TestWireDataAliasesBody(t *testing.T) {
	reqs, _ := wireSamples()
	frame := AppendRequestFrame(nil, &reqs[1])
	q, err := DecodeRequest(frame[FrameHeaderBytes:])
	if err != nil {
		t.Fatal(err)
	}
	if &q.Data[0] != &frame[len(frame)-len(q.Data)] {
		t.Fatal("Data was copied out of the frame body")
	}
}

func TestHello(t *testing.T) {
	b := AppendHello(nil, Hello{Version: WireVersion, Role: RoleEngine, ReplicaID: "r7"})
	h, err := ReadHello(bytes.NewReader(b))
	if err != nil || h != (Hello{Version: WireVersion, Role: RoleEngine, ReplicaID: "r7"}) {
		t.Fatalf("hello: %+v %v", h, err)
	}
	b = AppendHello(nil, Hello{Version: WireVersion + 1, Role: RoleReplica})
	_, err = ReadHello(bytes.NewReader(b))
	var ve *VersionError
	if !errors.As(err, &ve) || ve.Remote != WireVersion+1 {
		t.Fatalf("version mismatch: %v", err)
	}
	t.Log(err)
	if _, err := ReadHello(bytes.NewReader([]byte("GET / HTTP/1.1\r\n"))); !errors.Is(err, ErrBadHello) {
		t.Fatalf("http at the door: %v", err)
	}
}

func TestFrameErrors(t *testing.T) {
	reqs, _ := wireSamples()
	frame := AppendRequestFrame(nil, &reqs[1])
	bad := append([]byte(nil), frame...)
	bad[len(bad)-1] ^= 1
	if _, err := ReadFrame(bytes.NewReader(bad), nil); !errors.Is(err, ErrChecksum) {
		t.Fatalf("flipped bit: %v", err)
	}
	huge := binary.LittleEndian.AppendUint32(nil, MaxFrameBytes+1)
	huge = append(huge, 0, 0, 0, 0)
	if _, err := ReadFrame(bytes.NewReader(huge), nil); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("huge frame: %v", err)
	}
	if _, err := ReadFrame(bytes.NewReader(frame[:20]), nil); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("cut frame: %v", err)
	}
	body := frame[FrameHeaderBytes:]
	for n := range len(body) - len(reqs[1].Data) {
		if _, err := DecodeRequest(body[:n]); !errors.Is(err, ErrMalformed) {
			t.Fatalf("body cut at %d: %v", n, err)
		}
	}
	if _, err := DecodeReply(body); !errors.Is(err, ErrMalformed) {
		t.Fatalf("request decoded as a reply: %v", err)
	}
}

// TestUnsummedData: a layer write's data and a layer read reply's, which
// their block states checksum, are left out of the frame CRC (a damaged
// data byte passes the frame, for the target to refuse); everything else
// in those frames, and any other data, stays covered; a frame claiming
// unsummed data its block states do not cover is refused.
func TestUnsummedData(t *testing.T) {
	data := bytes.Repeat([]byte{7}, 2*BlockSize)
	states := []BlockState{{BlockIndex: 4, Kind: BlockData, CRC: 1}, {BlockIndex: 5, Kind: BlockZero}}
	frames := map[string][]byte{
		"layer write":      AppendRequestFrame(nil, &Request{ID: 1, Epoch: 2, Op: OpLayerWrite, BlockIndex: 4, BlockCount: 2, Data: data, Blocks: states}),
		"layer read reply": AppendReplyFrame(nil, &Reply{ID: 1, Data: data, Blocks: states}),
	}
	for name, frame := range frames {
		bad := append([]byte(nil), frame...)
		bad[len(bad)-1] ^= 1
		if _, err := ReadFrame(bytes.NewReader(bad), nil); err != nil {
			t.Fatalf("%s: a data byte is checked by the frame CRC: %v", name, err)
		}
		bad = append([]byte(nil), frame...)
		bad[len(bad)-len(data)-1] ^= 1 // the last byte before the data
		if _, err := ReadFrame(bytes.NewReader(bad), nil); !errors.Is(err, ErrChecksum) {
			t.Fatalf("%s: a byte before the data is not checked: %v", name, err)
		}
	}
	// The same data without block states (a plain write) stays summed.
	plain := AppendRequestFrame(nil, &Request{ID: 1, Epoch: 2, Op: OpWrite, BlockIndex: 4, BlockCount: 2, Data: data})
	plain[len(plain)-1] ^= 1
	if _, err := ReadFrame(bytes.NewReader(plain), nil); !errors.Is(err, ErrChecksum) {
		t.Fatalf("plain write data is not checked: %v", err)
	}
	// A layer write turned into a plain write keeps its flag: refused.
	forged := append([]byte(nil), frames["layer write"]...)
	forged[FrameHeaderBytes+1] = byte(OpWrite)
	if _, err := DecodeRequest(forged[FrameHeaderBytes:]); !errors.Is(err, ErrMalformed) {
		t.Fatalf("unsummed data on a plain write: %v", err)
	}
	// An announced length beyond the body is refused by ReadFrame.
	long := append([]byte(nil), frames["layer write"]...)
	binary.LittleEndian.PutUint32(long[FrameHeaderBytes+3:], uint32(len(long)))
	if _, err := ReadFrame(bytes.NewReader(long), nil); !errors.Is(err, ErrMalformed) {
		t.Fatalf("unsummed length beyond the body: %v", err)
	}
}

// TestFrameSplit: frames whose large data is written apart
// (Append*FrameHead) read back the same through ReadFrame and through
// ReadFrameSplit, which reads block-checked data apart; summed data stays
// under the CRC across the two slices.
func TestFrameSplit(t *testing.T) {
	big := bytes.Repeat([]byte{0x5a}, SplitDataBytes)
	states := make([]BlockState, len(big)/BlockSize)
	for i := range states {
		states[i] = BlockState{BlockIndex: uint64(i), Kind: BlockData, CRC: uint32(i)}
	}
	reqs := []Request{
		{ID: 1, Epoch: 2, Op: OpLayerWrite, Name: "l", BlockCount: uint32(len(states)), Data: big, Blocks: states},
		{ID: 2, Epoch: 2, Op: OpWrite, BlockCount: uint32(len(states)), Data: big},
		{ID: 3, Epoch: 2, Op: OpWrite, BlockCount: 1, Data: big[:BlockSize]},
	}
	for i := range reqs {
		frame, data := AppendRequestFrameHead([]byte("x"), &reqs[i])
		if split := len(reqs[i].Data) >= SplitDataBytes; (data != nil) != split {
			t.Fatalf("request %d: data apart %v, want %v", i, data != nil, split)
		}
		whole := append(frame[1:], data...)
		if want := AppendRequestFrame(nil, &reqs[i]); !bytes.Equal(whole, want) {
			t.Fatalf("request %d: head and data differ from the whole frame", i)
		}
		head, apart, err := ReadFrameSplit(bytes.NewReader(whole), nil, func(n int) []byte { return make([]byte, n) })
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if unsummed := reqs[i].unsummed(); (apart != nil) != unsummed {
			t.Fatalf("request %d: read apart %v, want %v", i, apart != nil, unsummed)
		}
		got, err := DecodeRequestSplit(head, apart)
		if err != nil || !reflect.DeepEqual(got, reqs[i]) {
			t.Fatalf("request %d: decoded %+v, %v", i, got.ID, err)
		}
		if !reqs[i].unsummed() {
			bad := append([]byte(nil), whole...)
			bad[len(bad)-1] ^= 1
			if _, _, err := ReadFrameSplit(bytes.NewReader(bad), nil, nil); !errors.Is(err, ErrChecksum) {
				t.Fatalf("request %d: summed data written apart is not checked: %v", i, err)
			}
		}
	}
	rep := Reply{ID: 4, Data: big, Blocks: states}
	frame, data := AppendReplyFrameHead(nil, &rep)
	head, apart, err := ReadFrameSplit(bytes.NewReader(append(frame, data...)), make([]byte, 0, 16), func(n int) []byte { return make([]byte, n) })
	if err != nil || apart == nil {
		t.Fatalf("reply: %v, apart %v", err, apart != nil)
	}
	if got, err := DecodeReplySplit(head, apart); err != nil || !reflect.DeepEqual(got, rep) {
		t.Fatalf("reply: decoded %v", err)
	}
	// Data read apart must be the length the body announces.
	if _, err := DecodeReplySplit(head, apart[1:]); !errors.Is(err, ErrMalformed) {
		t.Fatalf("reply with short data apart: %v", err)
	}
}
