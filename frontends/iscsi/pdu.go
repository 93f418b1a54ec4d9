package iscsi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
)

// Opcodes of initiator and target PDUs (RFC 7143 section 11.1.1).
const (
	opNOPOut     = 0x00
	opSCSICmd    = 0x01
	opTMFReq     = 0x02
	opLoginReq   = 0x03
	opTextReq    = 0x04
	opDataOut    = 0x05
	opLogoutReq  = 0x06
	opSNACKReq   = 0x10
	opNOPIn      = 0x20
	opSCSIResp   = 0x21
	opTMFResp    = 0x22
	opLoginResp  = 0x23
	opTextResp   = 0x24
	opDataIn     = 0x25
	opLogoutResp = 0x26
	opR2T        = 0x31
	opReject     = 0x3f
)

// bhsBytes is the size of the Basic Header Segment.
const bhsBytes = 48

// reservedTag is the all-ones tag that marks "no task" in ITT and TTT.
const reservedTag = 0xffffffff

// ErrMalformed marks a PDU that cannot be parsed; the connection that sent
// it is dropped.
var ErrMalformed = errors.New("malformed iSCSI PDU")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// PDU is one iSCSI protocol data unit: the 48-byte Basic Header Segment,
// any Additional Header Segments, and the data segment without padding.
type PDU struct {
	BHS  [bhsBytes]byte
	AHS  []byte
	Data []byte
}

// Opcode is the PDU's opcode without the immediate bit.
func (p *PDU) Opcode() byte { return p.BHS[0] & 0x3f }

// Immediate reports the I bit of an initiator PDU.
func (p *PDU) Immediate() bool { return p.BHS[0]&0x40 != 0 }

// Final reports the F bit.
func (p *PDU) Final() bool { return p.BHS[1]&0x80 != 0 }

// ITT is the Initiator Task Tag.
func (p *PDU) ITT() uint32 { return p.u32(16) }

func (p *PDU) u32(off int) uint32       { return binary.BigEndian.Uint32(p.BHS[off:]) }
func (p *PDU) u16(off int) uint16       { return binary.BigEndian.Uint16(p.BHS[off:]) }
func (p *PDU) put32(off int, v uint32)  { binary.BigEndian.PutUint32(p.BHS[off:], v) }
func (p *PDU) put16(off int, v uint16)  { binary.BigEndian.PutUint16(p.BHS[off:], v) }
func (p *PDU) lunField() [8]byte        { var l [8]byte; copy(l[:], p.BHS[8:16]); return l }
func (p *PDU) setLUNField(l [8]byte)    { copy(p.BHS[8:16], l[:]) }
func pad4(n int) int                    { return (4 - n%4) % 4 }
func dataSegmentLength(b []byte) uint32 { return uint32(b[5])<<16 | uint32(b[6])<<8 | uint32(b[7]) }
func crc32c(parts ...[]byte) uint32 {
	var c uint32
	for _, p := range parts {
		c = crc32.Update(c, castagnoli, p)
	}
	return c
}

// ReadLimits bounds what ReadPDU accepts and says which digests are in use.
type ReadLimits struct {
	// MaxDataBytes is the largest data segment accepted.
	MaxDataBytes uint32
	HeaderDigest bool
	DataDigest   bool
}

// ReadPDU reads one PDU from r. It returns an error wrapping ErrMalformed
// for a PDU that violates the limits or fails a digest, and the reader's
// error (io.EOF included) when the stream ends.
func ReadPDU(r io.Reader, lim ReadLimits) (*PDU, error) {
	p := &PDU{}
	if _, err := io.ReadFull(r, p.BHS[:]); err != nil {
		return nil, err
	}
	ahsBytes := int(p.BHS[4]) * 4
	dataBytes := dataSegmentLength(p.BHS[:])
	if dataBytes > lim.MaxDataBytes {
		return nil, fmt.Errorf("%w: data segment %d bytes exceeds %d", ErrMalformed, dataBytes, lim.MaxDataBytes)
	}
	if ahsBytes > 0 {
		p.AHS = make([]byte, ahsBytes)
		if _, err := io.ReadFull(r, p.AHS); err != nil {
			return nil, fmt.Errorf("read AHS: %w", err)
		}
	}
	if lim.HeaderDigest {
		var d [4]byte
		if _, err := io.ReadFull(r, d[:]); err != nil {
			return nil, fmt.Errorf("read header digest: %w", err)
		}
		if binary.LittleEndian.Uint32(d[:]) != crc32c(p.BHS[:], p.AHS) {
			return nil, fmt.Errorf("%w: header digest mismatch", ErrMalformed)
		}
	}
	if dataBytes == 0 {
		return p, nil
	}
	buf := make([]byte, int(dataBytes)+pad4(int(dataBytes)))
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, fmt.Errorf("read data segment: %w", err)
	}
	if lim.DataDigest {
		var d [4]byte
		if _, err := io.ReadFull(r, d[:]); err != nil {
			return nil, fmt.Errorf("read data digest: %w", err)
		}
		if binary.LittleEndian.Uint32(d[:]) != crc32c(buf) {
			return nil, fmt.Errorf("%w: data digest mismatch", ErrMalformed)
		}
	}
	p.Data = buf[:dataBytes]
	return p, nil
}

// writePDU writes p to w as one gathered write, setting the length fields
// and appending digests as asked.
func writePDU(w io.Writer, p *PDU, headerDigest, dataDigest bool) error {
	n := len(p.Data)
	p.BHS[4] = byte(len(p.AHS) / 4)
	p.BHS[5], p.BHS[6], p.BHS[7] = byte(n>>16), byte(n>>8), byte(n)
	bufs := net.Buffers{p.BHS[:]}
	if len(p.AHS) > 0 {
		bufs = append(bufs, p.AHS)
	}
	if headerDigest {
		d := binary.LittleEndian.AppendUint32(nil, crc32c(p.BHS[:], p.AHS))
		bufs = append(bufs, d)
	}
	if n > 0 {
		var padding [4]byte
		bufs = append(bufs, p.Data)
		if pad := pad4(n); pad > 0 {
			bufs = append(bufs, padding[:pad])
		}
		if dataDigest {
			bufs = append(bufs, binary.LittleEndian.AppendUint32(nil, crc32c(p.Data, padding[:pad4(n)])))
		}
	}
	if _, err := bufs.WriteTo(w); err != nil {
		return fmt.Errorf("write PDU opcode %#x: %w", p.Opcode(), err)
	}
	return nil
}
