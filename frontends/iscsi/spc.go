package iscsi

import (
	"encoding/binary"
)

// Identification strings of the standard INQUIRY data.
const (
	inquiryVendor   = "DROVER  "
	inquiryProduct  = "VOLUME          "
	inquiryRevision = "0001"
)

// VPD pages the logical unit supports, in ascending order.
var vpdPages = []byte{0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2}

func (lu *LogicalUnit) inquiry(r *request) Result {
	evpd, page := r.cdb[1]&0x01 != 0, r.cdb[2]
	alloc := uint32(binary.BigEndian.Uint16(r.cdb[3:]))
	if r.cdb[1]&0xfe != 0 || (!evpd && page != 0) {
		return checkCondition(senseInvalidFieldInCDB)
	}
	if !evpd {
		return Result{DataIn: allocated(lu.standardInquiry(), alloc)}
	}
	var body []byte
	switch page {
	case 0x00:
		body = vpdPages
	case 0x80:
		body = []byte(lu.serial)
	case 0x83:
		body = lu.deviceIdentification()
	case 0xb0:
		body = lu.blockLimits()
	case 0xb1:
		body = make([]byte, 0x3c)
		body[1] = 0x01 // non-rotating medium
	case 0xb2:
		// LBPU, LBPWS and LBPWS10; thin provisioned.
		body = []byte{0, 0xe0, 0x02, 0}
		if lu.trimZeroes {
			body[1] |= 0x04 // LBPRZ
		}
	default:
		return checkCondition(senseInvalidFieldInCDB)
	}
	d := make([]byte, 4, 4+len(body))
	d[1] = page
	binary.BigEndian.PutUint16(d[2:], uint16(len(body)))
	return Result{DataIn: allocated(append(d, body...), alloc)}
}

func (lu *LogicalUnit) standardInquiry() []byte {
	d := make([]byte, 66)
	d[2] = 0x06 // SPC-4
	d[3] = 0x12 // HISUP, response data format 2
	d[4] = byte(len(d) - 5)
	d[7] = 0x02 // CMDQUE
	copy(d[8:], inquiryVendor)
	copy(d[16:], inquiryProduct)
	copy(d[32:], inquiryRevision)
	// Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
	for i, v := range []uint16{0x00a0, 0x0960, 0x0460, 0x04c0} {
		binary.BigEndian.PutUint16(d[58+2*i:], v)
	}
	return d
}

// deviceIdentification is the body of VPD page 0x83: an NAA and a T10
// vendor designator for the logical unit, and the relative target port.
func (lu *LogicalUnit) deviceIdentification() []byte {
	var d []byte
	desig := func(codeSet, assocType byte, id []byte) {
		d = append(d, codeSet, assocType, 0, byte(len(id)))
		d = append(d, id...)
	}
	desig(0x01, 0x03, lu.naa[:])
	desig(0x02, 0x01, []byte(inquiryVendor+lu.serial))
	desig(0x51, 0x94, []byte{0, 0, 0, 1}) // iSCSI, target port, relative port 1
	return d
}

func (lu *LogicalUnit) blockLimits() []byte {
	d := make([]byte, 0x3c)
	d[0] = 0x01 // WSNZ: WRITE SAME of zero blocks is refused
	d[1] = maxCompareWriteBlocks
	gran := max(lu.dev.PreferredBlockBytes()/lu.blockBytes, 1)
	binary.BigEndian.PutUint16(d[2:], uint16(min(gran, 0xffff)))
	binary.BigEndian.PutUint32(d[4:], maxTransferBytes>>lu.blockShift)
	binary.BigEndian.PutUint32(d[8:], (1<<20)>>lu.blockShift)
	binary.BigEndian.PutUint32(d[16:], maxUnmapBlocks)
	binary.BigEndian.PutUint32(d[20:], maxUnmapDescriptors)
	binary.BigEndian.PutUint32(d[24:], gran)
	binary.BigEndian.PutUint64(d[32:], maxWriteSameBlocks)
	return d
}

func (lu *LogicalUnit) requestSense(r *request) Result {
	if r.cdb[1]&0x01 != 0 { // descriptor format
		d := make([]byte, 8)
		d[0] = 0x72
		return Result{DataIn: allocated(d, uint32(r.cdb[4]))}
	}
	return Result{DataIn: allocated(senseData(0, 0, 0), uint32(r.cdb[4]))}
}

// Mode pages.
const (
	pageCaching  = 0x08
	pageControl  = 0x0a
	pageInfoExcp = 0x1c
	pageAll      = 0x3f
)

func (lu *LogicalUnit) modePage(code byte, changeable bool) []byte {
	var p []byte
	switch code {
	case pageCaching:
		p = make([]byte, 20)
		p[0], p[1] = pageCaching, 18
		if !changeable {
			p[2] = 0x04 // WCE: acknowledged writes need FUA or a flush to be durable
		}
	case pageControl:
		p = make([]byte, 12)
		p[0], p[1] = pageControl, 10
		if !changeable {
			p[3] = 0x10 // unrestricted reordering of simple tasks
			binary.BigEndian.PutUint16(p[10:], 0xffff)
		}
	case pageInfoExcp:
		p = make([]byte, 12)
		p[0], p[1] = pageInfoExcp, 10
	}
	return p
}

// modeSense handles MODE SENSE 6 and 10. Pages are not changeable and not
// savable.
func (lu *LogicalUnit) modeSense(r *request) Result {
	ten := r.cdb[0] == opModeSense10
	dbd := r.cdb[1]&0x08 != 0
	pc, code, sub := r.cdb[2]>>6, r.cdb[2]&0x3f, r.cdb[3]
	alloc := uint32(r.cdb[4])
	if ten {
		alloc = uint32(binary.BigEndian.Uint16(r.cdb[7:]))
	}
	if pc == 3 {
		return checkCondition(senseSavingNotSupported)
	}
	var pages []byte
	switch {
	case code == pageAll && (sub == 0 || sub == 0xff):
		for _, c := range []byte{pageCaching, pageControl, pageInfoExcp} {
			pages = append(pages, lu.modePage(c, pc == 1)...)
		}
	case sub == 0 && (code == pageCaching || code == pageControl || code == pageInfoExcp):
		pages = lu.modePage(code, pc == 1)
	default:
		return checkCondition(senseInvalidFieldInCDB)
	}
	var bd []byte
	if !dbd {
		bd = make([]byte, 8)
		binary.BigEndian.PutUint32(bd, uint32(min(lu.blockCount(), 0xffffffff)))
		bd[5], bd[6], bd[7] = byte(lu.blockBytes>>16), byte(lu.blockBytes>>8), byte(lu.blockBytes)
	}
	var d []byte
	if ten {
		d = make([]byte, 8)
		d[3] = 0x10 // DPOFUA
		binary.BigEndian.PutUint16(d[6:], uint16(len(bd)))
		d = append(append(d, bd...), pages...)
		binary.BigEndian.PutUint16(d, uint16(len(d)-2))
	} else {
		d = make([]byte, 4)
		d[2] = 0x10
		d[3] = byte(len(bd))
		d = append(append(d, bd...), pages...)
		d[0] = byte(len(d) - 1)
	}
	return Result{DataIn: allocated(d, alloc)}
}
