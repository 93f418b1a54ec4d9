package iscsi

import "encoding/binary"

// Operation codes the logical unit implements.
const (
	opTestUnitReady   = 0x00
	opRequestSense    = 0x03
	opRead6           = 0x08
	opWrite6          = 0x0a
	opInquiry         = 0x12
	opReserve6        = 0x16
	opRelease6        = 0x17
	opModeSense6      = 0x1a
	opStartStopUnit   = 0x1b
	opPreventAllow    = 0x1e
	opReadCapacity10  = 0x25
	opRead10          = 0x28
	opWrite10         = 0x2a
	opWriteVerify10   = 0x2e
	opVerify10        = 0x2f
	opPrefetch10      = 0x34
	opSyncCache10     = 0x35
	opWriteSame10     = 0x41
	opUnmap           = 0x42
	opReserve10       = 0x56
	opRelease10       = 0x57
	opModeSense10     = 0x5a
	opPRIn            = 0x5e
	opPROut           = 0x5f
	opRead16          = 0x88
	opCompareAndWrite = 0x89
	opWrite16         = 0x8a
	opORWrite16       = 0x8b
	opWriteVerify16   = 0x8e
	opVerify16        = 0x8f
	opPrefetch16      = 0x90
	opSyncCache16     = 0x91
	opWriteSame16     = 0x93
	opServiceActionIn = 0x9e
	opReportLUNs      = 0xa0
	opMaintenanceIn   = 0xa3
	opRead12          = 0xa8
	opWrite12         = 0xaa
	opWriteVerify12   = 0xae
	opVerify12        = 0xaf

	saReadCapacity16 = 0x10
	saGetLBAStatus   = 0x12
	saReportOpcodes  = 0x0c
)

// access classifies a command for reservation conflicts (SPC-4 table 84
// and SPC-2 section 7.21) and unit attention.
type access int

const (
	// accessNoUA commands never conflict and never report unit attention.
	accessNoUA access = iota
	// accessAllowed commands never conflict.
	accessAllowed
	// accessRead commands conflict with exclusive access reservations.
	accessRead
	// accessWrite commands conflict with every reservation type.
	accessWrite
	// accessPROut commands are checked by the PR OUT handler itself.
	accessPROut
	// accessReserve commands are SPC-2 RESERVE and RELEASE.
	accessReserve
)

// command describes one supported command: how to run it and what REPORT
// SUPPORTED OPERATION CODES says about it.
type command struct {
	op     byte
	sa     uint16
	hasSA  bool
	cdbLen int
	// usage is the CDB usage data: the bits of each CDB byte the logical
	// unit looks at.
	usage  []byte
	access access
	run    func(*LogicalUnit, *request) Result
}

// usage builds CDB usage data; the first byte is the opcode.
func usage(b ...byte) []byte { return b }

// commands is the command table; init fills it, since REPORT SUPPORTED
// OPERATION CODES reads it.
var commands []*command

func init() {
	commands = []*command{
		{op: opTestUnitReady, cdbLen: 6, usage: usage(0x00, 0, 0, 0, 0, 0), access: accessAllowed, run: good},
		{op: opRequestSense, cdbLen: 6, usage: usage(0x03, 0x01, 0, 0, 0xff, 0), access: accessNoUA, run: (*LogicalUnit).requestSense},
		{op: opRead6, cdbLen: 6, usage: usage(0x08, 0x1f, 0xff, 0xff, 0xff, 0), access: accessRead, run: (*LogicalUnit).read},
		{op: opWrite6, cdbLen: 6, usage: usage(0x0a, 0x1f, 0xff, 0xff, 0xff, 0), access: accessWrite, run: (*LogicalUnit).write},
		{op: opInquiry, cdbLen: 6, usage: usage(0x12, 0x01, 0xff, 0xff, 0xff, 0), access: accessNoUA, run: (*LogicalUnit).inquiry},
		{op: opReserve6, cdbLen: 6, usage: usage(0x16, 0, 0, 0, 0, 0), access: accessReserve, run: (*LogicalUnit).reserve},
		{op: opRelease6, cdbLen: 6, usage: usage(0x17, 0, 0, 0, 0, 0), access: accessReserve, run: (*LogicalUnit).release},
		{op: opModeSense6, cdbLen: 6, usage: usage(0x1a, 0x08, 0xff, 0xff, 0xff, 0), access: accessRead, run: (*LogicalUnit).modeSense},
		{op: opStartStopUnit, cdbLen: 6, usage: usage(0x1b, 0x01, 0, 0x0f, 0xf7, 0), access: accessWrite, run: good},
		{op: opPreventAllow, cdbLen: 6, usage: usage(0x1e, 0, 0, 0, 0x03, 0), access: accessWrite, run: good},
		{op: opReadCapacity10, cdbLen: 10, usage: usage(0x25, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0x01, 0), access: accessAllowed, run: (*LogicalUnit).readCapacity10},
		{op: opRead10, cdbLen: 10, usage: usage(0x28, 0xfa, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0), access: accessRead, run: (*LogicalUnit).read},
		{op: opWrite10, cdbLen: 10, usage: usage(0x2a, 0xfa, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0), access: accessWrite, run: (*LogicalUnit).write},
		{op: opWriteVerify10, cdbLen: 10, usage: usage(0x2e, 0xf6, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0), access: accessWrite, run: (*LogicalUnit).write},
		{op: opVerify10, cdbLen: 10, usage: usage(0x2f, 0xf6, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0), access: accessRead, run: (*LogicalUnit).verify},
		{op: opPrefetch10, cdbLen: 10, usage: usage(0x34, 0x02, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0), access: accessRead, run: (*LogicalUnit).prefetch},
		{op: opSyncCache10, cdbLen: 10, usage: usage(0x35, 0x02, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0), access: accessWrite, run: (*LogicalUnit).synchronizeCache},
		{op: opWriteSame10, cdbLen: 10, usage: usage(0x41, 0xf8, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0), access: accessWrite, run: (*LogicalUnit).writeSame},
		{op: opUnmap, cdbLen: 10, usage: usage(0x42, 0x01, 0, 0, 0, 0, 0, 0xff, 0xff, 0), access: accessWrite, run: (*LogicalUnit).unmap},
		{op: opReserve10, cdbLen: 10, usage: usage(0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0), access: accessReserve, run: (*LogicalUnit).reserve},
		{op: opRelease10, cdbLen: 10, usage: usage(0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0), access: accessReserve, run: (*LogicalUnit).release},
		{op: opModeSense10, cdbLen: 10, usage: usage(0x5a, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0), access: accessRead, run: (*LogicalUnit).modeSense},
		{op: opPRIn, sa: prInReadKeys, hasSA: true, cdbLen: 10, usage: prInUsage(prInReadKeys), access: accessAllowed, run: (*LogicalUnit).prIn},
		{op: opPRIn, sa: prInReadReservation, hasSA: true, cdbLen: 10, usage: prInUsage(prInReadReservation), access: accessAllowed, run: (*LogicalUnit).prIn},
		{op: opPRIn, sa: prInReportCapabilities, hasSA: true, cdbLen: 10, usage: prInUsage(prInReportCapabilities), access: accessAllowed, run: (*LogicalUnit).prIn},
		{op: opPRIn, sa: prInReadFullStatus, hasSA: true, cdbLen: 10, usage: prInUsage(prInReadFullStatus), access: accessAllowed, run: (*LogicalUnit).prIn},
		{op: opPROut, sa: prOutRegister, hasSA: true, cdbLen: 10, usage: prOutUsage(prOutRegister), access: accessPROut, run: (*LogicalUnit).prOut},
		{op: opPROut, sa: prOutReserve, hasSA: true, cdbLen: 10, usage: prOutUsage(prOutReserve), access: accessPROut, run: (*LogicalUnit).prOut},
		{op: opPROut, sa: prOutRelease, hasSA: true, cdbLen: 10, usage: prOutUsage(prOutRelease), access: accessPROut, run: (*LogicalUnit).prOut},
		{op: opPROut, sa: prOutClear, hasSA: true, cdbLen: 10, usage: prOutUsage(prOutClear), access: accessPROut, run: (*LogicalUnit).prOut},
		{op: opPROut, sa: prOutPreempt, hasSA: true, cdbLen: 10, usage: prOutUsage(prOutPreempt), access: accessPROut, run: (*LogicalUnit).prOut},
		{op: opPROut, sa: prOutPreemptAbort, hasSA: true, cdbLen: 10, usage: prOutUsage(prOutPreemptAbort), access: accessPROut, run: (*LogicalUnit).prOut},
		{op: opPROut, sa: prOutRegisterIgnore, hasSA: true, cdbLen: 10, usage: prOutUsage(prOutRegisterIgnore), access: accessPROut, run: (*LogicalUnit).prOut},
		{op: opRead16, cdbLen: 16, usage: usage16(0x88, 0xfa), access: accessRead, run: (*LogicalUnit).read},
		{op: opCompareAndWrite, cdbLen: 16, usage: usage(0x89, 0xfa, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0xff, 0, 0), access: accessWrite, run: (*LogicalUnit).compareAndWrite},
		{op: opWrite16, cdbLen: 16, usage: usage16(0x8a, 0xfa), access: accessWrite, run: (*LogicalUnit).write},
		{op: opORWrite16, cdbLen: 16, usage: usage(0x8b, 0xfa, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x07, 0), access: accessWrite, run: (*LogicalUnit).orWrite},
		{op: opWriteVerify16, cdbLen: 16, usage: usage16(0x8e, 0xf6), access: accessWrite, run: (*LogicalUnit).write},
		{op: opVerify16, cdbLen: 16, usage: usage16(0x8f, 0xf6), access: accessRead, run: (*LogicalUnit).verify},
		{op: opPrefetch16, cdbLen: 16, usage: usage16(0x90, 0x02), access: accessRead, run: (*LogicalUnit).prefetch},
		{op: opSyncCache16, cdbLen: 16, usage: usage16(0x91, 0x02), access: accessWrite, run: (*LogicalUnit).synchronizeCache},
		{op: opWriteSame16, cdbLen: 16, usage: usage16(0x93, 0xf9), access: accessWrite, run: (*LogicalUnit).writeSame},
		{op: opServiceActionIn, sa: saReadCapacity16, hasSA: true, cdbLen: 16, usage: usage(0x9e, 0x1f, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0), access: accessAllowed, run: (*LogicalUnit).readCapacity16},
		{op: opServiceActionIn, sa: saGetLBAStatus, hasSA: true, cdbLen: 16, usage: usage(0x9e, 0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0), access: accessRead, run: (*LogicalUnit).getLBAStatus},
		{op: opReportLUNs, cdbLen: 12, usage: usage(0xa0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0), access: accessNoUA, run: nil},
		{op: opMaintenanceIn, sa: saReportOpcodes, hasSA: true, cdbLen: 12, usage: usage(0xa3, 0x1f, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0), access: accessNoUA, run: (*LogicalUnit).reportOpcodes},
		{op: opRead12, cdbLen: 12, usage: usage(0xa8, 0xfa, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0), access: accessRead, run: (*LogicalUnit).read},
		{op: opWrite12, cdbLen: 12, usage: usage(0xaa, 0xfa, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0), access: accessWrite, run: (*LogicalUnit).write},
		{op: opWriteVerify12, cdbLen: 12, usage: usage(0xae, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0), access: accessWrite, run: (*LogicalUnit).write},
		{op: opVerify12, cdbLen: 12, usage: usage(0xaf, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0), access: accessRead, run: (*LogicalUnit).verify},
	}
}

func usage16(op, flags byte) []byte {
	return usage(op, flags, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0)
}

func prInUsage(sa byte) []byte  { return usage(0x5e, sa, 0, 0, 0, 0, 0, 0xff, 0xff, 0) }
func prOutUsage(sa byte) []byte { return usage(0x5f, sa, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0) }

// serviceAction returns the service action field of a CDB whose opcode
// has service actions.
func serviceAction(cdb []byte) uint16 { return uint16(cdb[1] & 0x1f) }

// lookupCommand finds the command a CDB names, or nil.
func lookupCommand(cdb []byte) *command {
	for _, c := range commands {
		if c.op != cdb[0] {
			continue
		}
		if !c.hasSA || (len(cdb) > 1 && serviceAction(cdb) == c.sa) {
			return c
		}
	}
	return nil
}

func hasServiceActions(op byte) bool {
	for _, c := range commands {
		if c.op == op && c.hasSA {
			return true
		}
	}
	return false
}

// conflict reports whether a reservation held by another nexus forbids
// cmd to nexus.
func (lu *LogicalUnit) conflict(nexus string, cmd *command) bool {
	lu.mu.Lock()
	defer lu.mu.Unlock()
	if cmd.access == accessNoUA {
		return false
	}
	if lu.reserve2 != "" && lu.reserve2 != nexus {
		return cmd.access != accessReserve || cmd.op == opReserve6 || cmd.op == opReserve10
	}
	if cmd.access == accessReserve {
		return len(lu.pr.keys) > 0
	}
	if cmd.access == accessPROut {
		return false
	}
	return lu.pr.conflict(nexus, cmd.access)
}

func (lu *LogicalUnit) reserve(r *request) Result {
	if r.cdb[0] == opReserve10 && r.cdb[1]&0x12 != 0 {
		return checkCondition(senseInvalidFieldInCDB) // third-party or long ID
	}
	lu.mu.Lock()
	defer lu.mu.Unlock()
	lu.reserve2 = r.nexus
	return Result{}
}

func (lu *LogicalUnit) release(r *request) Result {
	if r.cdb[0] == opRelease10 && r.cdb[1]&0x12 != 0 {
		return checkCondition(senseInvalidFieldInCDB)
	}
	lu.mu.Lock()
	defer lu.mu.Unlock()
	if lu.reserve2 == r.nexus {
		lu.reserve2 = ""
	}
	return Result{}
}

// reportOpcodes handles REPORT SUPPORTED OPERATION CODES (SPC-4 6.35).
func (lu *LogicalUnit) reportOpcodes(r *request) Result {
	rctd := r.cdb[2]&0x80 != 0
	opt := r.cdb[2] & 0x07
	reqOp, reqSA := r.cdb[3], binary.BigEndian.Uint16(r.cdb[4:])
	alloc := binary.BigEndian.Uint32(r.cdb[6:])
	timeouts := func(b []byte) []byte {
		return append(b, 0, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0) // no timeouts known
	}
	if opt == 0 {
		d := make([]byte, 4)
		for _, c := range commands {
			desc := make([]byte, 8)
			desc[0] = c.op
			binary.BigEndian.PutUint16(desc[2:], c.sa)
			if c.hasSA {
				desc[5] |= 0x01
			}
			if rctd {
				desc[5] |= 0x02
			}
			binary.BigEndian.PutUint16(desc[6:], uint16(c.cdbLen))
			if rctd {
				desc = timeouts(desc)
			}
			d = append(d, desc...)
		}
		binary.BigEndian.PutUint32(d, uint32(len(d)-4))
		return Result{DataIn: allocated(d, alloc)}
	}
	if opt > 3 {
		return checkCondition(senseInvalidFieldInCDB)
	}
	withSA := hasServiceActions(reqOp)
	if (opt == 1 && withSA) || (opt == 2 && !withSA) {
		return checkCondition(senseInvalidFieldInCDB)
	}
	var found *command
	for _, c := range commands {
		if c.op == reqOp && (!c.hasSA || c.sa == reqSA) {
			found = c
			break
		}
	}
	d := make([]byte, 4)
	if found == nil {
		d[1] = 0x01 // not supported
	} else {
		d[1] = 0x03 // supported as the standard says
		if rctd {
			d[1] |= 0x80
		}
		binary.BigEndian.PutUint16(d[2:], uint16(len(found.usage)))
		u := append([]byte(nil), found.usage...)
		if found.hasSA {
			u[1] = u[1]&^0x1f | byte(found.sa)
		}
		d = append(d, u...)
		if rctd {
			d = timeouts(d)
		}
	}
	return Result{DataIn: allocated(d, alloc)}
}

// decodeLUN decodes an iSCSI LUN field using peripheral or flat space
// addressing (SAM-5 section 4.7).
func decodeLUN(f [8]byte) (int, bool) {
	if f[2]|f[3]|f[4]|f[5]|f[6]|f[7] != 0 {
		return 0, false
	}
	switch f[0] >> 6 {
	case 0:
		if f[0] != 0 {
			return 0, false
		}
		return int(f[1]), true
	case 1:
		return int(f[0]&0x3f)<<8 | int(f[1]), true
	}
	return 0, false
}

func encodeLUN(i int) [8]byte {
	var f [8]byte
	if i < 256 {
		f[1] = byte(i)
	} else {
		f[0], f[1] = 0x40|byte(i>>8), byte(i)
	}
	return f
}

// reportLUNs answers REPORT LUNS for a target with n logical units.
func reportLUNs(n int, cdb []byte) Result {
	if len(cdb) < 12 {
		return checkCondition(senseInvalidFieldInCDB)
	}
	alloc := binary.BigEndian.Uint32(cdb[6:])
	if alloc < 16 || (cdb[2] > 0x02 && (cdb[2] < 0x10 || cdb[2] > 0x12)) {
		return checkCondition(senseInvalidFieldInCDB)
	}
	d := make([]byte, 8, 8+8*n)
	if cdb[2] != 0x01 && cdb[2] != 0x11 { // well-known LUNs only: none
		for i := range n {
			f := encodeLUN(i)
			d = append(d, f[:]...)
		}
	}
	binary.BigEndian.PutUint32(d, uint32(len(d)-8))
	return Result{DataIn: allocated(d, alloc)}
}

// noSuchLUN answers a command addressed to a LUN that does not exist.
func noSuchLUN(cdb []byte) Result {
	if len(cdb) >= 6 && cdb[0] == opInquiry && cdb[1]&0x01 == 0 {
		d := make([]byte, 36)
		d[0] = 0x7f // peripheral qualifier 3: no logical unit here
		d[2], d[3], d[4] = 0x06, 0x12, 31
		return Result{DataIn: allocated(d, uint32(binary.BigEndian.Uint16(cdb[3:])))}
	}
	return checkCondition(senseLUNotSupported)
}
