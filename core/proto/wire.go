package proto

// The wire format between an engine and a replica (DESIGN.md, "Wire
// protocol"). A connection starts with one hello each way:
//
//	"DRVW" | version u16 | role u8 | id length u8 | replica id
//
// then carries frames, each
//
//	body length u32 | CRC32C (Castagnoli) of the body u32 | body
//
// where the body is one encoded Request (engine → replica) or Reply
// (replica → engine). Integers are little endian. Decoders never panic on
// bad bytes and allocate no more than the frame they are given holds;
// decoded Data aliases the frame body (no copy), or is the data
// ReadFrameSplit read apart from it. Large data (SplitDataBytes or more)
// can be written apart from its frame too (AppendRequestFrameHead): the
// bytes on the wire are the same either way.
//
// Data always ends the body. A body whose block states checksum every
// block of its data (an OpLayerWrite request, the reply to an
// OpLayerRead: len(Data) == len(Blocks) × BlockSize) has the flag
// flagUnsummedData and, right after its flags byte, the length of that
// data, which the frame's CRC32C leaves out: the rebuild target checks
// each data block against its state (replica.checkLayerWrite), so a byte
// damaged on either hop is refused there, and the engine, which only
// forwards it, does not checksum it twice more (version 4; before it
// every byte of a rebuild was checksummed six times between the source's
// disk and the target's).

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

const (
	// WireVersion is the protocol version this build speaks. A peer with
	// another version is refused with a *VersionError.
	// Version 2: Info carries Opened (an engine whose heartbeats read it
	// must not take a version-1 replica's silence on it for a restart).
	// Version 3: Info carries BackingSHA256.
	// Version 4: block-checked data is left out of the frame CRC (see the
	// top of the file).
	// Version 5: Info carries FUASeq.
	WireVersion uint16 = 5
	// FrameHeaderBytes is the size of a frame header (length and CRC).
	FrameHeaderBytes = 8
	// MaxFrameBytes bounds a frame body: the largest data request (4 MiB)
	// with room to spare for its block states, capped at 8 MiB + 64 KiB.
	MaxFrameBytes = 8<<20 + 64<<10
	// maxHelloIDBytes bounds the replica id in a hello.
	maxHelloIDBytes = 255
)

var wireMagic = [4]byte{'D', 'R', 'V', 'W'}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Role says which end of a connection a hello comes from.
type Role uint8

const (
	// RoleEngine: the side sending requests.
	RoleEngine Role = iota + 1
	// RoleReplica: the side answering them.
	RoleReplica
)

func (r Role) String() string {
	switch r {
	case RoleEngine:
		return "engine"
	case RoleReplica:
		return "replica"
	}
	return fmt.Sprintf("role(%d)", uint8(r))
}

// Hello opens a connection. An engine names the replica it expects; a
// replica names itself.
type Hello struct {
	Version   uint16
	Role      Role
	ReplicaID ReplicaID
}

// Wire errors callers branch on.
var (
	// ErrBadHello: the first bytes are not a Drover hello.
	ErrBadHello = errors.New("wire: not a drover connection (bad hello)")
	// ErrFrameTooLarge: a frame header announces more than MaxFrameBytes.
	ErrFrameTooLarge = errors.New("wire: frame too large")
	// ErrChecksum: a frame body does not match its CRC32C.
	ErrChecksum = errors.New("wire: frame checksum mismatch")
	// ErrMalformed: a frame body does not decode.
	ErrMalformed = errors.New("wire: malformed frame")
)

// VersionError reports a peer speaking another protocol version.
type VersionError struct {
	Local, Remote uint16
}

func (e *VersionError) Error() string {
	return fmt.Sprintf("wire: peer speaks protocol version %d, this build speaks %d", e.Remote, e.Local)
}

// AppendHello appends h's encoding to b.
func AppendHello(b []byte, h Hello) []byte {
	id := h.ReplicaID
	if len(id) > maxHelloIDBytes {
		id = id[:maxHelloIDBytes]
	}
	b = append(b, wireMagic[:]...)
	b = binary.LittleEndian.AppendUint16(b, h.Version)
	b = append(b, byte(h.Role), byte(len(id)))
	return append(b, id...)
}

// ReadHello reads one hello from r. A hello of another version is
// returned with a *VersionError; bytes that are no hello give ErrBadHello.
func ReadHello(r io.Reader) (Hello, error) {
	var fixed [8]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return Hello{}, fmt.Errorf("wire: read hello: %w", err)
	}
	if [4]byte(fixed[:4]) != wireMagic {
		return Hello{}, fmt.Errorf("%w: starts %q", ErrBadHello, fixed[:4])
	}
	h := Hello{Version: binary.LittleEndian.Uint16(fixed[4:]), Role: Role(fixed[6])}
	id := make([]byte, fixed[7])
	if _, err := io.ReadFull(r, id); err != nil {
		return Hello{}, fmt.Errorf("wire: read hello: %w", err)
	}
	h.ReplicaID = ReplicaID(id)
	if h.Role != RoleEngine && h.Role != RoleReplica {
		return h, fmt.Errorf("%w: role %d", ErrBadHello, h.Role)
	}
	if h.Version != WireVersion {
		return h, &VersionError{Local: WireVersion, Remote: h.Version}
	}
	return h, nil
}

// ReadFrame reads one frame from r and returns its checked body, in buf
// when it fits (else in a new slice). The header is read into buf too: a
// header array of its own would escape to the heap through r.
func ReadFrame(r io.Reader, buf []byte) ([]byte, error) {
	if cap(buf) < FrameHeaderBytes {
		buf = make([]byte, FrameHeaderBytes)
	}
	hdr := buf[:FrameHeaderBytes]
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, err
	}
	n, want := binary.LittleEndian.Uint32(hdr), binary.LittleEndian.Uint32(hdr[4:])
	if n > MaxFrameBytes {
		return nil, fmt.Errorf("%w: %d bytes (max %d)", ErrFrameTooLarge, n, MaxFrameBytes)
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	body := buf[:n]
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, frameBodyError(n, err)
	}
	summed, err := summedPart(body)
	if err != nil {
		return nil, err
	}
	if got := crc32.Checksum(summed, castagnoli); got != want {
		return nil, fmt.Errorf("%w: body %08x, header %08x", ErrChecksum, got, want)
	}
	return body, nil
}

// ReadFrameSplit is ReadFrame for a reader that wants large data in a
// buffer of its own rather than copied out of the frame: when the body's
// data is left out of the frame CRC (flagUnsummedData) and is at least
// SplitDataBytes long, it reads the body up to the data into buf (head)
// and the data into newData(n), which must return n bytes; otherwise head
// is the whole checked body, as from ReadFrame, and data is nil. Decode a
// split body with DecodeRequestSplit or DecodeReplySplit.
func ReadFrameSplit(r io.Reader, buf []byte, newData func(n int) []byte) (head, data []byte, err error) {
	if cap(buf) < FrameHeaderBytes+unsummedHeaderBytes {
		buf = make([]byte, FrameHeaderBytes+unsummedHeaderBytes)
	}
	buf = buf[:cap(buf)]
	hdr := buf[:FrameHeaderBytes]
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, nil, err
	}
	n, want := binary.LittleEndian.Uint32(hdr), binary.LittleEndian.Uint32(hdr[4:])
	if n > MaxFrameBytes {
		return nil, nil, fmt.Errorf("%w: %d bytes (max %d)", ErrFrameTooLarge, n, MaxFrameBytes)
	}
	// The first bytes of the body say whether its data is unsummed and
	// how long it is.
	first := min(int(n), unsummedHeaderBytes)
	if _, err := io.ReadFull(r, buf[:first]); err != nil {
		return nil, nil, frameBodyError(n, err)
	}
	headBytes := int(n)
	if first == unsummedHeaderBytes && buf[2]&flagUnsummedData != 0 {
		dataBytes := binary.LittleEndian.Uint32(buf[3:unsummedHeaderBytes])
		if dataBytes >= SplitDataBytes && uint64(dataBytes) <= uint64(n-unsummedHeaderBytes) {
			headBytes = int(n - dataBytes)
		}
	}
	if cap(buf) < headBytes {
		buf = append(make([]byte, 0, headBytes), buf[:first]...)
	}
	head = buf[:headBytes]
	if _, err := io.ReadFull(r, head[first:]); err != nil {
		return nil, nil, frameBodyError(n, err)
	}
	summed := head
	if headBytes < int(n) {
		data = newData(int(n) - headBytes)
		if len(data) != int(n)-headBytes {
			panic(fmt.Sprintf("wire: newData(%d) returned %d bytes", int(n)-headBytes, len(data)))
		}
		if _, err := io.ReadFull(r, data); err != nil {
			return nil, nil, frameBodyError(n, err)
		}
	} else if summed, err = summedPart(head); err != nil {
		return nil, nil, err
	}
	if got := crc32.Checksum(summed, castagnoli); got != want {
		return nil, nil, fmt.Errorf("%w: body %08x, header %08x", ErrChecksum, got, want)
	}
	return head, data, nil
}

func frameBodyError(n uint32, err error) error {
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("wire: read %d-byte frame body: %w", n, err)
}

// unsummedHeaderBytes is where the length of a body's unsummed data ends:
// kind, op or status, flags, then the u32 length.
const unsummedHeaderBytes = 7

// summedPart returns the part of body the frame CRC covers: all of it, or
// all but its trailing data when flagUnsummedData says so (the decoder
// then checks that the body's block states cover that data).
func summedPart(body []byte) ([]byte, error) {
	if len(body) < unsummedHeaderBytes || body[2]&flagUnsummedData == 0 {
		return body, nil
	}
	n := binary.LittleEndian.Uint32(body[3:unsummedHeaderBytes])
	if uint64(n) > uint64(len(body)-unsummedHeaderBytes) {
		return nil, fmt.Errorf("%w: %d unsummed data bytes in a %d-byte body", ErrMalformed, n, len(body))
	}
	return body[:len(body)-int(n)], nil
}

// blockChecked reports whether states checksum every block of data, so
// that data is left out of the frame CRC.
func blockChecked(data []byte, states []BlockState) bool {
	return len(data) > 0 && uint64(len(data)) == uint64(len(states))*BlockSize
}

func (q *Request) unsummed() bool { return q.Op == OpLayerWrite && blockChecked(q.Data, q.Blocks) }

func (p *Reply) unsummed() bool { return blockChecked(p.Data, p.Blocks) }

const (
	bodyRequest = 'Q'
	bodyReply   = 'P'

	flagFUA        = 1 << 0
	flagMembership = 1 << 1
	flagAttrs      = 1 << 2 // request: Attrs follow the blocks
	flagSnapshots  = 1 << 3 // reply: Snapshots follow the info
	flagInfo       = 1 << 2
	flagDirty      = 1 << 3
	flagOpened     = 1 << 4 // info: opened in this incarnation
	flagBacking    = 1 << 5 // info: BackingSHA256 follows the suspect extents
	flagFUASeq     = 1 << 6 // info: FUASeq follows BackingSHA256 (or the suspect extents)
	flagCreated    = 1 << 0 // info: Created follows FUASeq (or what precedes it)
	// flagUnsummedData (requests and replies): the frame CRC leaves out
	// the data, which the block states checksum (see the top of the file).
	flagUnsummedData = 1 << 7
)

// AppendRequestFrame appends a whole frame (header and body) holding req.
func AppendRequestFrame(b []byte, req *Request) []byte {
	start := len(b)
	b = append(b, make([]byte, FrameHeaderBytes)...)
	b = append(appendRequestHead(b, req), req.Data...)
	return sealFrame(b, start, req.unsummed(), len(req.Data))
}

// AppendReplyFrame appends a whole frame (header and body) holding rep.
func AppendReplyFrame(b []byte, rep *Reply) []byte {
	start := len(b)
	b = append(b, make([]byte, FrameHeaderBytes)...)
	b = append(appendReplyHead(b, rep), rep.Data...)
	return sealFrame(b, start, rep.unsummed(), len(rep.Data))
}

// SplitDataBytes is the least data the frame-head functions
// (AppendRequestFrameHead, AppendReplyFrameHead, ReadFrameSplit) keep out
// of the frame buffer. Copying smaller data costs less than a second
// slice per write (and keeps 4 KiB IO in one buffer).
const SplitDataBytes = 64 << 10

// AppendRequestFrameHead is AppendRequestFrame for a writer that sends
// large data from where it lies (writev) instead of copying it into the
// frame: when req carries at least SplitDataBytes of data, it appends the
// frame without its data and returns the data, which must follow those
// bytes on the wire unchanged; otherwise it appends the whole frame and
// returns nil. The frame's CRC covers the data when AppendRequestFrame's
// would (computed over both slices).
func AppendRequestFrameHead(b []byte, req *Request) ([]byte, []byte) {
	if len(req.Data) < SplitDataBytes {
		return AppendRequestFrame(b, req), nil
	}
	start := len(b)
	b = append(b, make([]byte, FrameHeaderBytes)...)
	b = appendRequestHead(b, req)
	return sealFrameHead(b, start, req.unsummed(), req.Data), req.Data
}

// AppendReplyFrameHead is AppendRequestFrameHead for a reply.
func AppendReplyFrameHead(b []byte, rep *Reply) ([]byte, []byte) {
	if len(rep.Data) < SplitDataBytes {
		return AppendReplyFrame(b, rep), nil
	}
	start := len(b)
	b = append(b, make([]byte, FrameHeaderBytes)...)
	b = appendReplyHead(b, rep)
	return sealFrameHead(b, start, rep.unsummed(), rep.Data), rep.Data
}

// sealFrameHead fills in the header of the frame whose body is b[start+
// FrameHeaderBytes:] followed by data; the CRC covers data unless
// unsummed.
func sealFrameHead(b []byte, start int, unsummed bool, data []byte) []byte {
	head := b[start+FrameHeaderBytes:]
	crc := crc32.Checksum(head, castagnoli)
	if !unsummed {
		crc = crc32.Update(crc, castagnoli, data)
	}
	binary.LittleEndian.PutUint32(b[start:], uint32(len(head)+len(data)))
	binary.LittleEndian.PutUint32(b[start+4:], crc)
	return b
}

// sealFrame fills in the header of the frame at b[start:]; when unsummed,
// the CRC leaves out the body's last dataBytes.
func sealFrame(b []byte, start int, unsummed bool, dataBytes int) []byte {
	body := b[start+FrameHeaderBytes:]
	summed := body
	if unsummed {
		summed = body[:len(body)-dataBytes]
	}
	binary.LittleEndian.PutUint32(b[start:], uint32(len(body)))
	binary.LittleEndian.PutUint32(b[start+4:], crc32.Checksum(summed, castagnoli))
	return b
}

// appendRequestHead appends q's body up to its data (the data's length
// included): the data follows, in the buffer or on the wire.
func appendRequestHead(b []byte, q *Request) []byte {
	var flags byte
	if q.FUA {
		flags |= flagFUA
	}
	if q.Membership != nil {
		flags |= flagMembership
	}
	if q.Attrs != nil {
		flags |= flagAttrs
	}
	if q.unsummed() {
		flags |= flagUnsummedData
	}
	b = append(b, bodyRequest, byte(q.Op), flags)
	if q.unsummed() {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(q.Data)))
	}
	b = appendU64s(b, q.ID, q.Epoch, q.BlockIndex, q.Seq, q.SizeBytes)
	b = binary.LittleEndian.AppendUint32(b, q.BlockCount)
	b = appendString(b, q.Name)
	b = appendString(b, q.Name2)
	if q.Membership != nil {
		b = appendMembership(b, q.Membership)
	}
	b = appendStrings(b, q.Chain)
	b = appendBlocks(b, q.Blocks)
	if q.Attrs != nil {
		b = appendAttrs(b, q.Attrs)
	}
	return binary.LittleEndian.AppendUint32(b, uint32(len(q.Data)))
}

// appendReplyHead is appendRequestHead for a reply.
func appendReplyHead(b []byte, p *Reply) []byte {
	var flags byte
	if p.Info != nil {
		flags |= flagInfo
	}
	if p.Snapshots != nil {
		flags |= flagSnapshots
	}
	if p.unsummed() {
		flags |= flagUnsummedData
	}
	b = append(b, bodyReply, byte(p.Status), flags)
	if p.unsummed() {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(p.Data)))
	}
	b = appendU64s(b, p.ID, p.BlockIndex)
	b = appendString(b, p.Err)
	b = appendBlocks(b, p.Blocks)
	b = appendExtents(b, p.Extents)
	if p.Info != nil {
		b = appendInfo(b, p.Info)
	}
	if p.Snapshots != nil {
		b = appendSnapshots(b, p.Snapshots)
	}
	return binary.LittleEndian.AppendUint32(b, uint32(len(p.Data)))
}

func appendInfo(b []byte, in *Info) []byte {
	var flags byte
	if in.Membership != nil {
		flags |= flagMembership
	}
	if in.Dirty {
		flags |= flagDirty
	}
	if in.Opened {
		flags |= flagOpened
	}
	if in.BackingSHA256 != "" {
		flags |= flagBacking
	}
	if in.FUASeq != 0 {
		flags |= flagFUASeq
	}
	if in.Created != 0 {
		flags |= flagCreated
	}
	b = append(b, flags)
	b = appendString(b, string(in.ID))
	b = appendU64s(b, in.SizeBytes, in.Epoch, in.FlushedSeq)
	b = binary.LittleEndian.AppendUint32(b, in.ActiveRegions)
	b = appendStrings(b, in.Chain)
	if in.Membership != nil {
		b = appendMembership(b, in.Membership)
	}
	b = appendExtents(b, in.Recovered)
	b = appendExtents(b, in.Suspect)
	if in.BackingSHA256 != "" {
		b = appendString(b, in.BackingSHA256)
	}
	if in.FUASeq != 0 {
		b = appendU64s(b, in.FUASeq)
	}
	if in.Created != 0 {
		b = appendU64s(b, in.Created)
	}
	return b
}

func appendMembership(b []byte, m *Membership) []byte {
	b = appendU64s(b, m.Gen, m.Epoch)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(m.Members)))
	for _, x := range m.Members {
		b = appendString(b, string(x.ID))
		b = append(b, byte(x.Mode))
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(m.Prev)))
	for _, x := range m.Prev {
		b = appendString(b, string(x.ID))
		b = append(b, byte(x.Mode))
	}
	// Creation epochs follow, all or none (none when every one is 0:
	// one encoding per body).
	if !m.anyCreated() {
		return append(b, 0)
	}
	b = append(b, 1)
	for _, x := range m.Members {
		b = appendU64s(b, x.Created)
	}
	for _, x := range m.Prev {
		b = appendU64s(b, x.Created)
	}
	return b
}

func (m *Membership) anyCreated() bool {
	for _, x := range m.Members {
		if x.Created != 0 {
			return true
		}
	}
	for _, x := range m.Prev {
		if x.Created != 0 {
			return true
		}
	}
	return false
}

func appendU64s(b []byte, vs ...uint64) []byte {
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint64(b, v)
	}
	return b
}

func appendString(b []byte, s string) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

func appendStrings(b []byte, ss []string) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(ss)))
	for _, s := range ss {
		b = appendString(b, s)
	}
	return b
}

func appendBlocks(b []byte, bs []BlockState) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(bs)))
	for _, x := range bs {
		b = binary.LittleEndian.AppendUint64(b, x.BlockIndex)
		b = append(b, byte(x.Kind))
		b = binary.LittleEndian.AppendUint32(b, x.CRC)
	}
	return b
}

func appendExtents(b []byte, es []Extent) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(es)))
	for _, e := range es {
		b = appendU64s(b, e.BlockIndex, e.BlockCount)
	}
	return b
}

// decoder reads a body; the first failure sticks and later reads return
// zeros, so decode functions check err once at the end.
type decoder struct {
	b   []byte
	err error
	// split: the body's data is not in b but in splitData (ReadFrameSplit).
	split     bool
	splitData []byte
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
	}
}

func (d *decoder) take(n uint64, what string) []byte {
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail("%s needs %d bytes, %d left", what, n, len(d.b))
		return nil
	}
	s := d.b[:n:n]
	d.b = d.b[n:]
	return s
}

func (d *decoder) u8(what string) byte {
	if s := d.take(1, what); s != nil {
		return s[0]
	}
	return 0
}

func (d *decoder) u32(what string) uint32 {
	if s := d.take(4, what); s != nil {
		return binary.LittleEndian.Uint32(s)
	}
	return 0
}

func (d *decoder) u64(what string) uint64 {
	if s := d.take(8, what); s != nil {
		return binary.LittleEndian.Uint64(s)
	}
	return 0
}

// count reads an element count and checks that many elements of at least
// elemBytes each fit in what is left, bounding the allocation to come.
func (d *decoder) count(elemBytes uint64, what string) int {
	n := uint64(d.u32(what))
	if d.err == nil && n*elemBytes > uint64(len(d.b)) {
		d.fail("%d %s do not fit in %d bytes", n, what, len(d.b))
		return 0
	}
	return int(n)
}

func (d *decoder) bytes(what string) []byte {
	n := d.u32(what)
	return d.take(uint64(n), what)
}

// data reads the body's data: its length, then the bytes that follow in
// b, or splitData when the body was split.
func (d *decoder) data() []byte {
	if !d.split {
		return d.bytes("data")
	}
	if n := d.u32("data"); d.err == nil && uint64(n) != uint64(len(d.splitData)) {
		d.fail("data of %d bytes announced, %d read apart", n, len(d.splitData))
		return nil
	}
	return d.splitData
}

func (d *decoder) string(what string) string { return string(d.bytes(what)) }

func (d *decoder) strings(what string) []string {
	n := d.count(4, what)
	if n == 0 {
		return nil
	}
	ss := make([]string, n)
	for i := range ss {
		ss[i] = d.string(what)
	}
	return ss
}

func (d *decoder) blocks() []BlockState {
	n := d.count(13, "block states")
	if n == 0 {
		return nil
	}
	bs := make([]BlockState, n)
	for i := range bs {
		bs[i] = BlockState{BlockIndex: d.u64("block index"), Kind: BlockKind(d.u8("block kind")), CRC: d.u32("block crc")}
	}
	return bs
}

func (d *decoder) extents(what string) []Extent {
	n := d.count(16, what)
	if n == 0 {
		return nil
	}
	es := make([]Extent, n)
	for i := range es {
		es[i] = Extent{BlockIndex: d.u64(what), BlockCount: d.u64(what)}
	}
	return es
}

func (d *decoder) membership() *Membership {
	m := &Membership{Gen: d.u64("membership gen"), Epoch: d.u64("membership epoch")}
	n := d.count(5, "members")
	if n > 0 {
		m.Members = make([]Member, n)
		for i := range m.Members {
			m.Members[i] = Member{ID: ReplicaID(d.string("member id")), Mode: MemberMode(d.u8("member mode"))}
		}
	}
	if n := d.count(5, "previous members"); n > 0 {
		m.Prev = make([]Member, n)
		for i := range m.Prev {
			m.Prev[i] = Member{ID: ReplicaID(d.string("member id")), Mode: MemberMode(d.u8("member mode"))}
		}
	}
	switch d.u8("member creation epochs") {
	case 0:
	case 1:
		for i := range m.Members {
			m.Members[i].Created = d.u64("member created")
		}
		for i := range m.Prev {
			m.Prev[i].Created = d.u64("member created")
		}
		if d.err == nil && !m.anyCreated() {
			d.fail("member creation epochs all zero")
		}
	default:
		d.fail("bad member creation epochs marker")
	}
	return m
}

// unsummedBytes reads the length of the data the frame CRC left out, if
// the flags say it did.
func (d *decoder) unsummedBytes(flags byte) uint32 {
	if flags&flagUnsummedData == 0 {
		return 0
	}
	return d.u32("unsummed data bytes")
}

// checkUnsummed requires the data to be left out of the frame CRC exactly
// when block states checksum it: data no block state covers must have
// been summed (a frame claiming otherwise is refused, whatever its CRC),
// and the encoding stays canonical.
func (d *decoder) checkUnsummed(flags byte, unsummedBytes uint32, covered bool, dataBytes int) {
	flagged := flags&flagUnsummedData != 0
	switch {
	case d.err != nil:
	case flagged && !covered:
		d.fail("data left out of the frame checksum is not covered by block states")
	case !flagged && covered:
		d.fail("block-checked data not marked as left out of the frame checksum")
	case flagged && int(unsummedBytes) != dataBytes:
		d.fail("%d unsummed data bytes announced, %d present", unsummedBytes, dataBytes)
	}
}

func (d *decoder) end() {
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
}

// DecodeRequest decodes a frame body holding a Request. Data aliases body.
func DecodeRequest(body []byte) (Request, error) {
	return decodeRequest(&decoder{b: body})
}

// DecodeRequestSplit decodes a body ReadFrameSplit returned: Data is data
// when that is not nil, else it aliases head.
func DecodeRequestSplit(head, data []byte) (Request, error) {
	return decodeRequest(&decoder{b: head, split: data != nil, splitData: data})
}

func decodeRequest(d *decoder) (Request, error) {
	if n := len(d.b) + len(d.splitData); n > MaxFrameBytes {
		return Request{}, fmt.Errorf("%w: %d bytes", ErrFrameTooLarge, n)
	}
	if d.u8("body kind") != bodyRequest && d.err == nil {
		d.fail("not a request")
	}
	var q Request
	q.Op = Op(d.u8("op"))
	flags := d.u8("flags")
	unsummedBytes := d.unsummedBytes(flags)
	q.FUA = flags&flagFUA != 0
	q.ID, q.Epoch, q.BlockIndex = d.u64("id"), d.u64("epoch"), d.u64("block index")
	q.Seq, q.SizeBytes = d.u64("seq"), d.u64("size")
	q.BlockCount = d.u32("block count")
	q.Name, q.Name2 = d.string("name"), d.string("name2")
	if flags&flagMembership != 0 {
		q.Membership = d.membership()
	}
	q.Chain = d.strings("chain")
	q.Blocks = d.blocks()
	if flags&flagAttrs != 0 {
		q.Attrs = d.attrs()
	}
	q.Data = d.data()
	if len(q.Data) == 0 {
		q.Data = nil
	}
	d.end()
	if d.err == nil && flags&^(flagFUA|flagMembership|flagAttrs|flagUnsummedData) != 0 {
		d.fail("unknown request flags %#x", flags)
	}
	d.checkUnsummed(flags, unsummedBytes, q.unsummed(), len(q.Data))
	if d.err != nil {
		return Request{}, d.err
	}
	return q, nil
}

// DecodeReply decodes a frame body holding a Reply. Data aliases body.
func DecodeReply(body []byte) (Reply, error) {
	return decodeReply(&decoder{b: body})
}

// DecodeReplySplit is DecodeRequestSplit for a reply.
func DecodeReplySplit(head, data []byte) (Reply, error) {
	return decodeReply(&decoder{b: head, split: data != nil, splitData: data})
}

func decodeReply(d *decoder) (Reply, error) {
	if n := len(d.b) + len(d.splitData); n > MaxFrameBytes {
		return Reply{}, fmt.Errorf("%w: %d bytes", ErrFrameTooLarge, n)
	}
	if d.u8("body kind") != bodyReply && d.err == nil {
		d.fail("not a reply")
	}
	var p Reply
	p.Status = Status(d.u8("status"))
	flags := d.u8("flags")
	unsummedBytes := d.unsummedBytes(flags)
	p.ID, p.BlockIndex = d.u64("id"), d.u64("block index")
	p.Err = d.string("error")
	p.Blocks = d.blocks()
	p.Extents = d.extents("extents")
	if flags&flagInfo != 0 {
		p.Info = d.info()
	}
	if flags&flagSnapshots != 0 {
		p.Snapshots = d.snapshots()
	}
	p.Data = d.data()
	if len(p.Data) == 0 {
		p.Data = nil
	}
	d.end()
	if d.err == nil && flags&^(flagInfo|flagSnapshots|flagUnsummedData) != 0 {
		d.fail("unknown reply flags %#x", flags)
	}
	d.checkUnsummed(flags, unsummedBytes, p.unsummed(), len(p.Data))
	if d.err != nil {
		return Reply{}, d.err
	}
	return p, nil
}

func (d *decoder) info() *Info {
	flags := d.u8("info flags")
	in := &Info{ID: ReplicaID(d.string("info id"))}
	in.SizeBytes, in.Epoch, in.FlushedSeq = d.u64("size"), d.u64("epoch"), d.u64("flushed seq")
	in.ActiveRegions = d.u32("active regions")
	in.Chain = d.strings("chain")
	if flags&flagMembership != 0 {
		in.Membership = d.membership()
	}
	in.Dirty = flags&flagDirty != 0
	in.Opened = flags&flagOpened != 0
	in.Recovered = d.extents("recovered")
	in.Suspect = d.extents("suspect")
	if flags&flagBacking != 0 {
		// Never empty: an empty checksum is sent as no flag, and each
		// body has one encoding (FuzzDecodeReply found the other).
		if in.BackingSHA256 = d.string("backing sha256"); in.BackingSHA256 == "" && d.err == nil {
			d.fail("backing flag with an empty sha256")
		}
	}
	if flags&flagFUASeq != 0 {
		// Never zero: a zero is sent as no flag (one encoding per body).
		if in.FUASeq = d.u64("fua seq"); in.FUASeq == 0 && d.err == nil {
			d.fail("fua seq flag with a zero seq")
		}
	}
	if flags&flagCreated != 0 {
		if in.Created = d.u64("created"); in.Created == 0 && d.err == nil {
			d.fail("created flag with a zero epoch")
		}
	}
	if d.err == nil && flags&^(flagMembership|flagDirty|flagOpened|flagBacking|flagFUASeq|flagCreated) != 0 {
		d.fail("unknown info flags %#x", flags)
	}
	return in
}
