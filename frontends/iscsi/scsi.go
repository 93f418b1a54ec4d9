package iscsi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"sync"

	"github.com/drover-io/drover/transports/device"
)

// SCSI status codes (SAM-5).
const (
	statusGood                = 0x00
	statusCheckCondition      = 0x02
	statusBusy                = 0x08
	statusTaskSetFull         = 0x28
	statusReservationConflict = 0x18
)

// Limits the logical unit advertises in the Block Limits VPD page.
const (
	maxTransferBytes       = 8 << 20
	maxCompareWriteBlocks  = 255
	maxUnmapDescriptors    = 256
	maxUnmapBlocks         = 1 << 20
	maxWriteSameBlocks     = maxTransferBytes / 512
	writeSameChunkBytes    = 1 << 20
	readCapacity16DataSize = 32
)

// Result is the outcome of one SCSI command.
type Result struct {
	// Status is the SCSI status.
	Status byte
	// Sense is fixed-format sense data for CHECK CONDITION.
	Sense []byte
	// DataIn is all the data the command would return; the transport
	// sends what the initiator expects and reports the rest as residual.
	DataIn []byte
	// WantOut is how many data-out bytes the command asked for, against
	// which the transport computes residuals.
	WantOut uint32
}

func checkCondition(sense []byte) Result { return Result{Status: statusCheckCondition, Sense: sense} }

// senseData builds fixed-format sense data (SPC-4 section 4.5.3).
func senseData(key, asc, ascq byte) []byte {
	s := make([]byte, 18)
	s[0] = 0x70
	s[2] = key
	s[7] = 10
	s[12], s[13] = asc, ascq
	return s
}

// Sense data for the errors the logical unit reports.
var (
	senseInvalidOpcode       = senseData(0x05, 0x20, 0x00)
	senseInvalidFieldInCDB   = senseData(0x05, 0x24, 0x00)
	senseInvalidFieldInParam = senseData(0x05, 0x26, 0x00)
	senseParamListLength     = senseData(0x05, 0x1a, 0x00)
	senseLBAOutOfRange       = senseData(0x05, 0x21, 0x00)
	senseLUNotSupported      = senseData(0x05, 0x25, 0x00)
	senseSavingNotSupported  = senseData(0x05, 0x39, 0x00)
	senseInvalidPRRelease    = senseData(0x05, 0x26, 0x04)
	senseReadError           = senseData(0x03, 0x11, 0x00)
	senseWriteError          = senseData(0x03, 0x0c, 0x00)
	senseWriteProtected      = senseData(0x07, 0x27, 0x00)
	senseSpaceAllocFailed    = senseData(0x07, 0x27, 0x07)
	senseCapacityChanged     = senseData(0x06, 0x2a, 0x09)
	senseCommandAborted      = senseData(0x0b, 0x00, 0x00)
	senseDataPhaseError      = senseData(0x0b, 0x4b, 0x00)
)

// senseMiscompare reports a miscompare at byte offset off of the compared
// data, in the INFORMATION field.
func senseMiscompare(off uint32) []byte {
	s := senseData(0x0e, 0x1d, 0x00)
	s[0] |= 0x80
	binary.BigEndian.PutUint32(s[3:], off)
	return s
}

// ioSense maps a Device error to sense data.
func ioSense(err error, write bool) []byte {
	switch {
	case errors.Is(err, device.ErrInvalid):
		return senseLBAOutOfRange
	case errors.Is(err, device.ErrReadOnly):
		return senseWriteProtected
	case errors.Is(err, device.ErrNoSpace):
		return senseSpaceAllocFailed
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return senseCommandAborted
	case write:
		return senseWriteError
	}
	return senseReadError
}

// LogicalUnit serves one Device as a SCSI direct-access block device. Its
// logical block size is the Device's MinBlockBytes. It is safe for
// concurrent use by many I_T nexuses.
type LogicalUnit struct {
	dev        device.Device
	name       string
	blockBytes uint32
	blockShift uint
	serial     string
	naa        [8]byte
	// trimZeroes says trimmed blocks read as zeros (LBPRZ), when the
	// Device tells so through a TrimZeroes() bool method.
	trimZeroes bool

	// rmwMu serialises COMPARE AND WRITE and ORWRITE with each other.
	rmwMu sync.Mutex

	mu       sync.Mutex
	seenSize map[string]uint64 // capacity each nexus was last told of
	reserve2 string            // nexus holding an SPC-2 reservation
	pr       prState
}

// NewLogicalUnit makes a logical unit serving dev; name identifies it in
// the device identification VPD page and must be unique per server.
func NewLogicalUnit(dev device.Device, name string) (*LogicalUnit, error) {
	bs := dev.MinBlockBytes()
	if bs < 512 || bs > 65536 || bs&(bs-1) != 0 {
		return nil, fmt.Errorf("block size %d is not a power of two from 512 to 65536", bs)
	}
	sum := sha256.Sum256([]byte(name))
	lu := &LogicalUnit{
		dev:        dev,
		name:       name,
		blockBytes: bs,
		blockShift: uint(bits.TrailingZeros32(bs)),
		serial:     fmt.Sprintf("%x", sum[:10]),
		seenSize:   make(map[string]uint64),
		pr:         newPRState(),
	}
	if tz, ok := dev.(interface{ TrimZeroes() bool }); ok {
		lu.trimZeroes = tz.TrimZeroes()
	}
	copy(lu.naa[:], sum[10:18])
	lu.naa[0] = 0x30 | lu.naa[0]&0x0f // NAA 3: locally assigned
	return lu, nil
}

func (lu *LogicalUnit) blockCount() uint64 { return lu.dev.SizeBytes() >> lu.blockShift }

// checkRange returns LBA OUT OF RANGE sense unless [lba, lba+count) lies
// on the medium.
func (lu *LogicalUnit) checkRange(lba, count uint64) []byte {
	n := lu.blockCount()
	if lba > n || count > n-lba {
		return senseLBAOutOfRange
	}
	return nil
}

// request is one command as the handlers see it.
type request struct {
	ctx      context.Context
	nexus    string
	cdb      []byte
	data     []byte
	expected uint32
}

// Execute runs one SCSI command from the I_T nexus named nexus. dataOut
// holds the data the initiator sent (possibly less than the command asks
// for); expectedBytes is the initiator's Expected Data Transfer Length.
func (lu *LogicalUnit) Execute(ctx context.Context, nexus string, cdb, dataOut []byte, expectedBytes uint32) Result {
	if len(cdb) == 0 {
		return checkCondition(senseInvalidOpcode)
	}
	cmd := lookupCommand(cdb)
	if cmd == nil {
		if hasServiceActions(cdb[0]) {
			return checkCondition(senseInvalidFieldInCDB)
		}
		return checkCondition(senseInvalidOpcode)
	}
	if len(cdb) < cmd.cdbLen {
		return checkCondition(senseInvalidFieldInCDB)
	}
	if cmd.access != accessNoUA {
		if sense := lu.unitAttention(nexus); sense != nil {
			return checkCondition(sense)
		}
	}
	if lu.conflict(nexus, cmd) {
		return Result{Status: statusReservationConflict}
	}
	if cmd.run == nil { // REPORT LUNS addressed to a lone logical unit
		return reportLUNs(1, cdb)
	}
	return cmd.run(lu, &request{ctx: ctx, nexus: nexus, cdb: cdb, data: dataOut, expected: expectedBytes})
}

// unitAttention reports CAPACITY DATA HAS CHANGED once to each nexus after
// the device's size changes.
func (lu *LogicalUnit) unitAttention(nexus string) []byte {
	size := lu.dev.SizeBytes()
	lu.mu.Lock()
	defer lu.mu.Unlock()
	seen, ok := lu.seenSize[nexus]
	lu.seenSize[nexus] = size
	if ok && seen != size {
		return senseCapacityChanged
	}
	return nil
}

// NexusGone releases what an I_T nexus held when its session ends: an
// SPC-2 reservation and its unit attention state. Persistent reservations
// survive, as SPC-4 requires.
func (lu *LogicalUnit) NexusGone(nexus string) {
	lu.mu.Lock()
	defer lu.mu.Unlock()
	if lu.reserve2 == nexus {
		lu.reserve2 = ""
	}
	delete(lu.seenSize, nexus)
}

// Reset is a logical unit reset: it releases any SPC-2 reservation.
func (lu *LogicalUnit) Reset() {
	lu.mu.Lock()
	defer lu.mu.Unlock()
	lu.reserve2 = ""
}

// rw is a decoded READ or WRITE CDB.
type rw struct {
	lba   uint64
	count uint64
	flags byte
}

func decodeRW(cdb []byte) rw {
	switch len6 := cdb[0] < 0x20; {
	case len6:
		n := uint64(cdb[4])
		if n == 0 {
			n = 256
		}
		return rw{lba: uint64(cdb[1]&0x1f)<<16 | uint64(cdb[2])<<8 | uint64(cdb[3]), count: n}
	case cdb[0] < 0x60:
		return rw{lba: uint64(binary.BigEndian.Uint32(cdb[2:])), count: uint64(binary.BigEndian.Uint16(cdb[7:])), flags: cdb[1]}
	case cdb[0] >= 0xa0:
		return rw{lba: uint64(binary.BigEndian.Uint32(cdb[2:])), count: uint64(binary.BigEndian.Uint32(cdb[6:])), flags: cdb[1]}
	}
	return rw{lba: binary.BigEndian.Uint64(cdb[2:]), count: uint64(binary.BigEndian.Uint32(cdb[10:])), flags: cdb[1]}
}

// checkRW validates protection bits, range and transfer length.
func (lu *LogicalUnit) checkRW(c rw) []byte {
	if c.flags&0xe0 != 0 {
		return senseInvalidFieldInCDB // no protection information
	}
	if sense := lu.checkRange(c.lba, c.count); sense != nil {
		return sense
	}
	if c.count<<lu.blockShift > maxTransferBytes {
		return senseInvalidFieldInCDB
	}
	return nil
}

func (lu *LogicalUnit) read(r *request) Result {
	c := decodeRW(r.cdb)
	if sense := lu.checkRW(c); sense != nil {
		return checkCondition(sense)
	}
	buf := make([]byte, c.count<<lu.blockShift)
	if len(buf) > 0 {
		if err := lu.dev.ReadAt(r.ctx, buf, c.lba<<lu.blockShift); err != nil {
			return checkCondition(ioSense(err, false))
		}
	}
	return Result{DataIn: buf}
}

// write handles WRITE 6/10/12/16 and WRITE AND VERIFY 10/12/16. When the
// initiator sent less than the command asks for, only the whole blocks
// received are written, and the transport reports the overflow.
func (lu *LogicalUnit) write(r *request) Result {
	c := decodeRW(r.cdb)
	if sense := lu.checkRW(c); sense != nil {
		return checkCondition(sense)
	}
	want := uint32(c.count << lu.blockShift)
	data := r.data[:min(uint32(len(r.data)), want)]
	data = data[:len(data)>>lu.blockShift<<lu.blockShift]
	fua := c.flags&0x08 != 0 || r.cdb[0] == opWriteVerify10 || r.cdb[0] == opWriteVerify12 || r.cdb[0] == opWriteVerify16
	if len(data) > 0 {
		if err := lu.dev.WriteAt(r.ctx, data, c.lba<<lu.blockShift, fua); err != nil {
			return checkCondition(ioSense(err, true))
		}
	}
	return Result{WantOut: want}
}

// verify handles VERIFY 10/12/16: BYTCHK 0 reads the range, 1 compares it
// with the data sent, 3 compares every block with one block sent.
func (lu *LogicalUnit) verify(r *request) Result {
	c := decodeRW(r.cdb)
	bytchk := (c.flags >> 1) & 3
	c.flags &^= 0x16 // BYTCHK and DPO are not protection bits
	if sense := lu.checkRW(c); sense != nil {
		return checkCondition(sense)
	}
	if bytchk == 2 {
		return checkCondition(senseInvalidFieldInCDB)
	}
	size := c.count << lu.blockShift
	medium := make([]byte, size)
	if size > 0 {
		if err := lu.dev.ReadAt(r.ctx, medium, c.lba<<lu.blockShift); err != nil {
			return checkCondition(ioSense(err, false))
		}
	}
	var want uint32
	switch bytchk {
	case 1:
		want = uint32(size)
	case 3:
		want = lu.blockBytes
		if size == 0 {
			want = 0
		}
	}
	if uint32(len(r.data)) < want {
		return Result{WantOut: want} // overflow: nothing to compare against
	}
	for off := uint64(0); bytchk != 0 && off < size; off += uint64(lu.blockBytes) {
		expect := r.data[off : off+uint64(lu.blockBytes)]
		if bytchk == 3 {
			expect = r.data[:lu.blockBytes]
		}
		if i := mismatch(medium[off:off+uint64(lu.blockBytes)], expect); i >= 0 {
			return checkCondition(senseMiscompare(uint32(off) + uint32(i)))
		}
	}
	return Result{WantOut: want}
}

func mismatch(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

func (lu *LogicalUnit) synchronizeCache(r *request) Result {
	var lba, count uint64
	if r.cdb[0] == opSyncCache10 {
		lba, count = uint64(binary.BigEndian.Uint32(r.cdb[2:])), uint64(binary.BigEndian.Uint16(r.cdb[7:]))
	} else {
		lba, count = binary.BigEndian.Uint64(r.cdb[2:]), uint64(binary.BigEndian.Uint32(r.cdb[10:]))
	}
	if sense := lu.checkRange(lba, count); sense != nil {
		return checkCondition(sense)
	}
	if err := lu.dev.Flush(r.ctx); err != nil {
		return checkCondition(ioSense(err, true))
	}
	return Result{}
}

func (lu *LogicalUnit) prefetch(r *request) Result {
	var lba, count uint64
	if r.cdb[0] == opPrefetch10 {
		lba, count = uint64(binary.BigEndian.Uint32(r.cdb[2:])), uint64(binary.BigEndian.Uint16(r.cdb[7:]))
	} else {
		lba, count = binary.BigEndian.Uint64(r.cdb[2:]), uint64(binary.BigEndian.Uint32(r.cdb[10:]))
	}
	if sense := lu.checkRange(lba, count); sense != nil {
		return checkCondition(sense)
	}
	return Result{}
}

// writeSame handles WRITE SAME 10/16. With the UNMAP bit and zero data
// (or NDOB) the range is zeroed through WriteZeroes, which may deallocate
// it; otherwise the pattern block is written to every block.
func (lu *LogicalUnit) writeSame(r *request) Result {
	c := decodeRW(r.cdb)
	unmap, ndob := c.flags&0x08 != 0, r.cdb[0] == opWriteSame16 && c.flags&0x01 != 0
	if c.flags&0xf6 != 0 || c.count == 0 || c.count > maxWriteSameBlocks {
		// Protection, ANCHOR, PBDATA and LBDATA are unsupported; WSNZ is set.
		return checkCondition(senseInvalidFieldInCDB)
	}
	if sense := lu.checkRange(c.lba, c.count); sense != nil {
		return checkCondition(sense)
	}
	want := lu.blockBytes
	if ndob {
		want = 0
	}
	if r.expected != want || uint32(len(r.data)) < want {
		return checkCondition(senseParamListLength)
	}
	block := r.data[:want]
	off, size := c.lba<<lu.blockShift, c.count<<lu.blockShift
	if ndob || !bytes.ContainsFunc(block, func(r rune) bool { return r != 0 }) {
		if err := lu.dev.WriteZeroes(r.ctx, off, size, false); err != nil {
			return checkCondition(ioSense(err, true))
		}
		_ = unmap // zeroes may be deallocated whether or not UNMAP is set
		return Result{WantOut: want}
	}
	chunk := bytes.Repeat(block, int(min(size, writeSameChunkBytes)>>lu.blockShift))
	for done := uint64(0); done < size; {
		n := min(uint64(len(chunk)), size-done)
		if err := lu.dev.WriteAt(r.ctx, chunk[:n], off+done, false); err != nil {
			return checkCondition(ioSense(err, true))
		}
		done += n
	}
	return Result{WantOut: want}
}

// unmap handles UNMAP: every descriptor is checked before any is applied.
func (lu *LogicalUnit) unmap(r *request) Result {
	if r.cdb[1]&0x01 != 0 {
		return checkCondition(senseInvalidFieldInCDB) // ANCHOR
	}
	paramLen := uint32(binary.BigEndian.Uint16(r.cdb[7:]))
	res := Result{WantOut: paramLen}
	if paramLen == 0 {
		return res
	}
	if paramLen < 8 {
		return checkCondition(senseParamListLength)
	}
	data := r.data[:min(uint32(len(r.data)), paramLen)]
	if len(data) < 8 {
		return checkCondition(senseParamListLength)
	}
	descBytes := int(binary.BigEndian.Uint16(data[2:]))
	descs := data[8:]
	descs = descs[:min(len(descs), descBytes)/16*16]
	if len(descs)/16 > maxUnmapDescriptors {
		return checkCondition(senseInvalidFieldInParam)
	}
	var total uint64
	for d := descs; len(d) >= 16; d = d[16:] {
		lba, n := binary.BigEndian.Uint64(d), uint64(binary.BigEndian.Uint32(d[8:]))
		if sense := lu.checkRange(lba, n); sense != nil {
			return checkCondition(sense)
		}
		total += n
	}
	if total > maxUnmapBlocks {
		return checkCondition(senseInvalidFieldInParam)
	}
	for d := descs; len(d) >= 16; d = d[16:] {
		lba, n := binary.BigEndian.Uint64(d), uint64(binary.BigEndian.Uint32(d[8:]))
		if n == 0 {
			continue
		}
		if err := lu.dev.Trim(r.ctx, lba<<lu.blockShift, n<<lu.blockShift, false); err != nil {
			return checkCondition(ioSense(err, true))
		}
	}
	return res
}

// compareAndWrite handles COMPARE AND WRITE: it is atomic with respect to
// other COMPARE AND WRITE and ORWRITE commands, not to plain writes.
func (lu *LogicalUnit) compareAndWrite(r *request) Result {
	lba, count := binary.BigEndian.Uint64(r.cdb[2:]), uint64(r.cdb[13])
	fua := r.cdb[1]&0x08 != 0
	if r.cdb[1]&0xe0 != 0 || count > maxCompareWriteBlocks {
		return checkCondition(senseInvalidFieldInCDB)
	}
	if sense := lu.checkRange(lba, count); sense != nil {
		return checkCondition(sense)
	}
	size := count << lu.blockShift
	want := uint32(2 * size)
	if r.expected != want {
		return checkCondition(senseInvalidFieldInCDB)
	}
	if count == 0 {
		return Result{}
	}
	if uint32(len(r.data)) < want {
		return Result{WantOut: want}
	}
	lu.rmwMu.Lock()
	defer lu.rmwMu.Unlock()
	medium := make([]byte, size)
	if err := lu.dev.ReadAt(r.ctx, medium, lba<<lu.blockShift); err != nil {
		return checkCondition(ioSense(err, false))
	}
	if i := mismatch(medium, r.data[:size]); i >= 0 {
		return checkCondition(senseMiscompare(uint32(i)))
	}
	if err := lu.dev.WriteAt(r.ctx, r.data[size:2*size], lba<<lu.blockShift, fua); err != nil {
		return checkCondition(ioSense(err, true))
	}
	return Result{WantOut: want}
}

// orWrite handles ORWRITE 16 without multiple-command sets (BMOP 0): the
// data sent is ORed into the medium.
func (lu *LogicalUnit) orWrite(r *request) Result {
	c := decodeRW(r.cdb)
	if c.flags&0x04 != 0 {
		c.flags &^= 0x04 // obsolete
	}
	if r.cdb[14]&0x07 != 0 { // BMOP
		return checkCondition(senseInvalidFieldInCDB)
	}
	if sense := lu.checkRW(c); sense != nil {
		return checkCondition(sense)
	}
	size := c.count << lu.blockShift
	want := uint32(size)
	data := r.data[:min(uint32(len(r.data)), want)]
	data = data[:len(data)>>lu.blockShift<<lu.blockShift]
	if len(data) == 0 {
		return Result{WantOut: want}
	}
	lu.rmwMu.Lock()
	defer lu.rmwMu.Unlock()
	medium := make([]byte, len(data))
	off := c.lba << lu.blockShift
	if err := lu.dev.ReadAt(r.ctx, medium, off); err != nil {
		return checkCondition(ioSense(err, false))
	}
	for i := range medium {
		medium[i] |= data[i]
	}
	if err := lu.dev.WriteAt(r.ctx, medium, off, c.flags&0x08 != 0); err != nil {
		return checkCondition(ioSense(err, true))
	}
	return Result{WantOut: want}
}

func (lu *LogicalUnit) readCapacity10(r *request) Result {
	if r.cdb[8]&0x01 == 0 && binary.BigEndian.Uint32(r.cdb[2:]) != 0 {
		return checkCondition(senseInvalidFieldInCDB)
	}
	d := make([]byte, 8)
	last := lu.blockCount() - 1
	binary.BigEndian.PutUint32(d, uint32(min(last, 0xffffffff)))
	binary.BigEndian.PutUint32(d[4:], lu.blockBytes)
	return Result{DataIn: d}
}

func (lu *LogicalUnit) readCapacity16(r *request) Result {
	d := make([]byte, readCapacity16DataSize)
	binary.BigEndian.PutUint64(d, lu.blockCount()-1)
	binary.BigEndian.PutUint32(d[8:], lu.blockBytes)
	if pref := lu.dev.PreferredBlockBytes(); pref > lu.blockBytes && pref&(pref-1) == 0 {
		d[13] = byte(bits.TrailingZeros32(pref / lu.blockBytes))
	}
	d[14] = 0x80 // LBPME: UNMAP and WRITE SAME with UNMAP deallocate
	if lu.trimZeroes {
		d[14] |= 0x40 // LBPRZ
	}
	return Result{DataIn: allocated(d, binary.BigEndian.Uint32(r.cdb[10:]))}
}

// getLBAStatus handles GET LBA STATUS, which SBC-3 requires of a logical
// unit that reports LBPME (qemu's iSCSI driver asks it for block status,
// and prints an error for every refusal). A Device cannot tell which
// blocks are mapped, so one descriptor covers the starting LBA to the end
// of the LUN (at most 2^32-1 blocks) with status 0, "mapped or unknown"
// (SBC-4); initiators then read those blocks as data.
func (lu *LogicalUnit) getLBAStatus(r *request) Result {
	lba, n := binary.BigEndian.Uint64(r.cdb[2:]), lu.blockCount()
	if lba >= n {
		return checkCondition(senseLBAOutOfRange)
	}
	d := make([]byte, 8+16)
	binary.BigEndian.PutUint32(d, uint32(len(d)-4))
	binary.BigEndian.PutUint64(d[8:], lba)
	binary.BigEndian.PutUint32(d[16:], uint32(min(n-lba, 0xffffffff)))
	return Result{DataIn: allocated(d, binary.BigEndian.Uint32(r.cdb[10:]))}
}

// allocated truncates data to an allocation length.
func allocated(data []byte, allocLen uint32) []byte {
	return data[:min(uint32(len(data)), allocLen)]
}

func good(*LogicalUnit, *request) Result { return Result{} }
