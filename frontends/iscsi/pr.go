package iscsi

import (
	"encoding/binary"
	"slices"
)

// PERSISTENT RESERVE IN and OUT service actions (SPC-4 sections 6.15,
// 6.16).
const (
	prInReadKeys           = 0x00
	prInReadReservation    = 0x01
	prInReportCapabilities = 0x02
	prInReadFullStatus     = 0x03

	prOutRegister       = 0x00
	prOutReserve        = 0x01
	prOutRelease        = 0x02
	prOutClear          = 0x03
	prOutPreempt        = 0x04
	prOutPreemptAbort   = 0x05
	prOutRegisterIgnore = 0x06
)

// Persistent reservation types.
const (
	prWriteExclusive         = 1
	prExclusiveAccess        = 3
	prWriteExclusiveRegOnly  = 5
	prExclusiveAccessRegOnly = 6
	prWriteExclusiveAllReg   = 7
	prExclusiveAccessAllReg  = 8
)

// prOutParamBytes is the length of the PR OUT parameter list.
const prOutParamBytes = 24

// prState holds persistent reservations of one logical unit. It is not
// persisted through power loss (PTPL_C is 0). Guarded by LogicalUnit.mu.
type prState struct {
	generation uint32
	keys       map[string]uint64 // registration key per I_T nexus
	order      []string          // registration order, for READ KEYS
	holder     string            // reservation holder (types 1, 3, 5, 6)
	typ        byte              // 0: no reservation
}

func newPRState() prState { return prState{keys: make(map[string]uint64)} }

func allRegistrants(typ byte) bool {
	return typ == prWriteExclusiveAllReg || typ == prExclusiveAccessAllReg
}

func (s *prState) isHolder(nexus string) bool {
	if s.typ == 0 {
		return false
	}
	if allRegistrants(s.typ) {
		_, ok := s.keys[nexus]
		return ok
	}
	return s.holder == nexus
}

// conflict applies SPC-4 table 84 to a command of the given access class.
func (s *prState) conflict(nexus string, a access) bool {
	if s.typ == 0 || s.isHolder(nexus) || (a != accessRead && a != accessWrite) {
		return false
	}
	_, registered := s.keys[nexus]
	switch s.typ {
	case prWriteExclusive:
		return a == accessWrite
	case prExclusiveAccess:
		return true
	case prWriteExclusiveRegOnly, prWriteExclusiveAllReg:
		return a == accessWrite && !registered
	}
	return !registered // exclusive access, registrants only or all registrants
}

func (s *prState) register(nexus string, key uint64) {
	if _, ok := s.keys[nexus]; !ok {
		s.order = append(s.order, nexus)
	}
	s.keys[nexus] = key
}

func (s *prState) unregister(nexus string) {
	delete(s.keys, nexus)
	s.order = slices.DeleteFunc(s.order, func(n string) bool { return n == nexus })
	if s.typ == 0 {
		return
	}
	if allRegistrants(s.typ) {
		if len(s.keys) == 0 {
			s.typ, s.holder = 0, ""
		}
	} else if s.holder == nexus {
		s.typ, s.holder = 0, ""
	}
}

func (lu *LogicalUnit) prIn(r *request) Result {
	alloc := uint32(binary.BigEndian.Uint16(r.cdb[7:]))
	lu.mu.Lock()
	defer lu.mu.Unlock()
	s := &lu.pr
	d := make([]byte, 8)
	binary.BigEndian.PutUint32(d, s.generation)
	switch serviceAction(r.cdb) {
	case prInReadKeys:
		for _, n := range s.order {
			d = binary.BigEndian.AppendUint64(d, s.keys[n])
		}
		binary.BigEndian.PutUint32(d[4:], uint32(len(d)-8))
	case prInReadReservation:
		if s.typ != 0 {
			var key uint64
			if !allRegistrants(s.typ) {
				key = s.keys[s.holder]
			}
			d = binary.BigEndian.AppendUint64(d, key)
			d = append(d, 0, 0, 0, 0, 0, s.typ, 0, 0)
			binary.BigEndian.PutUint32(d[4:], 16)
		}
	case prInReportCapabilities:
		d = []byte{0, 8, 0, 0x80, 0xea, 0x01, 0, 0}
		// TMV with the type mask: WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC,
		// WR_EX and EX_AC_AR. No SPEC_I_PT, ALL_TG_PT or PTPL.
	case prInReadFullStatus:
		for _, n := range s.order {
			d = append(d, s.fullStatus(n)...)
		}
		binary.BigEndian.PutUint32(d[4:], uint32(len(d)-8))
	default:
		return checkCondition(senseInvalidFieldInCDB)
	}
	return Result{DataIn: allocated(d, alloc)}
}

func (lu *LogicalUnit) prOut(r *request) Result {
	sa := byte(serviceAction(r.cdb))
	scope, typ := r.cdb[2]>>4, r.cdb[2]&0x0f
	paramLen := binary.BigEndian.Uint32(r.cdb[5:])
	res := Result{WantOut: paramLen}
	if paramLen != prOutParamBytes {
		return checkCondition(senseParamListLength)
	}
	if uint32(len(r.data)) < prOutParamBytes {
		return res // overflow: the initiator sent too little
	}
	key, saKey := binary.BigEndian.Uint64(r.data), binary.BigEndian.Uint64(r.data[8:])
	flags := r.data[20]
	if flags&0x0d != 0 { // SPEC_I_PT, ALL_TG_PT, APTPL are not supported
		return checkCondition(senseInvalidFieldInParam)
	}
	lu.mu.Lock()
	defer lu.mu.Unlock()
	if lu.reserve2 != "" && lu.reserve2 != r.nexus {
		return Result{Status: statusReservationConflict}
	}
	s := &lu.pr
	cur, registered := s.keys[r.nexus]
	switch sa {
	case prOutRegister, prOutRegisterIgnore:
		if sa == prOutRegister && (registered && key != cur || !registered && key != 0) {
			return Result{Status: statusReservationConflict}
		}
		if saKey == 0 {
			if registered {
				s.unregister(r.nexus)
			}
		} else {
			s.register(r.nexus, saKey)
		}
		s.generation++
		return res
	}
	if !registered || key != cur {
		return Result{Status: statusReservationConflict}
	}
	validType := func() bool {
		return scope == 0 && slices.Contains([]byte{1, 3, 5, 6, 7, 8}, typ)
	}
	switch sa {
	case prOutReserve:
		if !validType() {
			return checkCondition(senseInvalidFieldInCDB)
		}
		if s.typ != 0 {
			if !s.isHolder(r.nexus) || s.typ != typ {
				return Result{Status: statusReservationConflict}
			}
			return res
		}
		s.typ, s.holder = typ, r.nexus
	case prOutRelease:
		if s.typ == 0 || !s.isHolder(r.nexus) {
			return res
		}
		if s.typ != typ || scope != 0 {
			return checkCondition(senseInvalidPRRelease)
		}
		s.typ, s.holder = 0, ""
	case prOutClear:
		s.keys, s.order = make(map[string]uint64), nil
		s.typ, s.holder = 0, ""
		s.generation++
	case prOutPreempt, prOutPreemptAbort:
		if !validType() {
			return checkCondition(senseInvalidFieldInCDB)
		}
		return lu.preempt(r.nexus, saKey, typ, res)
	default:
		return checkCondition(senseInvalidFieldInCDB)
	}
	return res
}

// preempt implements PREEMPT (SPC-4 section 5.13.11.4). Aborting the
// preempted nexuses' tasks is not done: they complete normally.
func (lu *LogicalUnit) preempt(nexus string, saKey uint64, typ byte, res Result) Result {
	s := &lu.pr
	remove := func(match func(string, uint64) bool) int {
		removed := 0
		for _, n := range slices.Clone(s.order) {
			if n != nexus && match(n, s.keys[n]) {
				delete(s.keys, n)
				s.order = slices.DeleteFunc(s.order, func(x string) bool { return x == n })
				removed++
			}
		}
		return removed
	}
	switch {
	case s.typ != 0 && allRegistrants(s.typ) && saKey == 0:
		remove(func(string, uint64) bool { return true })
		s.typ, s.holder = typ, nexus
	case s.typ != 0 && !allRegistrants(s.typ) && s.keys[s.holder] == saKey:
		remove(func(_ string, k uint64) bool { return k == saKey })
		s.typ, s.holder = typ, nexus
	default:
		if saKey == 0 {
			return checkCondition(senseInvalidFieldInParam)
		}
		if remove(func(_ string, k uint64) bool { return k == saKey }) == 0 {
			return Result{Status: statusReservationConflict}
		}
	}
	s.generation++
	return res
}

// fullStatus is the READ FULL STATUS descriptor of one registrant, with an
// iSCSI initiator port TransportID (format 01b).
func (s *prState) fullStatus(nexus string) []byte {
	d := binary.BigEndian.AppendUint64(nil, s.keys[nexus])
	d = append(d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1) // relative target port 1
	if s.isHolder(nexus) {
		d[12] = 0x01
		d[13] = s.typ
	}
	name := append([]byte(nexus), 0)
	name = append(name, make([]byte, pad4(len(name)))...)
	tid := []byte{0x45, 0, byte(len(name) >> 8), byte(len(name))}
	tid = append(tid, name...)
	d = binary.BigEndian.AppendUint32(d, uint32(len(tid)))
	return append(d, tid...)
}
