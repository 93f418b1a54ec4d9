package iscsi

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Login status class and detail (RFC 7143 section 11.13.5).
const (
	loginSuccess         = 0x0000
	loginInitiatorError  = 0x0200
	loginAuthFailure     = 0x0201
	loginAuthzFailure    = 0x0202
	loginNotFound        = 0x0203
	loginMissingParam    = 0x0207
	loginUnsupportedVer  = 0x0205
	loginSessionNotExist = 0x020a
	loginInvalidRequest  = 0x020b
	loginTargetError     = 0x0300
)

// Login stages.
const (
	stageSecurity    = 0
	stageOperational = 1
	stageFullFeature = 3
)

// Target-side limits offered during operational negotiation.
const (
	ourMaxRecvDataSegmentBytes = 256 << 10
	ourMaxBurstBytes           = 1 << 20
	ourFirstBurstBytes         = 256 << 10
	loginMaxDataBytes          = 64 << 10
)

// params are the negotiated session and connection parameters.
type params struct {
	headerDigest, dataDigest bool
	// sendDataBytes is the initiator's MaxRecvDataSegmentLength: the
	// largest data segment the target may send.
	sendDataBytes                  uint32
	maxBurstBytes, firstBurstBytes uint32
	initialR2T, immediateData      bool
}

func defaultParams() params {
	return params{
		sendDataBytes:   8192,
		maxBurstBytes:   262144,
		firstBurstBytes: 65536,
		initialR2T:      true,
		immediateData:   true,
	}
}

// loginError ends a login with a status.
type loginError struct {
	status uint16
	reason string
}

func (e *loginError) Error() string {
	return fmt.Sprintf("login refused with status %#04x: %s", e.status, e.reason)
}

func refuse(status uint16, format string, args ...any) error {
	return &loginError{status: status, reason: fmt.Sprintf(format, args...)}
}

// session is what a completed login establishes.
type session struct {
	discovery     bool
	target        *target
	initiatorName string
	isid          [6]byte
	tsih          uint16
	// nexus names the I_T nexus: initiator port name as SPC defines it.
	nexus string
}

// loginState is the target side of one login phase.
type loginState struct {
	csg             byte
	first           bool
	initiatorName   string
	sessionType     string
	target          *target
	chapCfg         *CHAP
	chap            *chapState
	chapStep        int
	authDone        bool
	sentOperational bool
	sentTPGT        bool
	pending         []byte
	p               params
}

// login runs the login phase on c until full feature phase or failure.
func (c *conn) login() error {
	ls := &loginState{first: true, p: defaultParams()}
	lim := ReadLimits{MaxDataBytes: loginMaxDataBytes}
	for {
		req, err := ReadPDU(c.rd, lim)
		if err != nil {
			return fmt.Errorf("read login request: %w", err)
		}
		if req.Opcode() != opLoginReq {
			return fmt.Errorf("%w: opcode %#x during login", ErrMalformed, req.Opcode())
		}
		resp, done, err := c.loginStep(ls, req)
		if err != nil {
			var le *loginError
			if !errors.As(err, &le) {
				return err
			}
			c.log.Warn("login refused", "status", fmt.Sprintf("%#04x", le.status), "reason", le.reason,
				"initiator", ls.initiatorName)
			fail := loginResponse(req, c.statSN, le.status)
			fail.BHS[1] = 0
			_ = c.sendLogin(fail)
			return err
		}
		if err := c.sendLogin(resp); err != nil {
			return err
		}
		if done {
			c.p = ls.p
			return nil
		}
	}
}

func (c *conn) sendLogin(p *PDU) error {
	p.put32(24, c.statSN)
	c.statSN++
	p.put32(28, c.expCmdSN)
	p.put32(32, c.expCmdSN+cmdWindow-1)
	return writePDU(c.nc, p, false, false)
}

func loginResponse(req *PDU, statSN uint32, status uint16) *PDU {
	p := &PDU{}
	p.BHS[0] = opLoginResp
	p.BHS[1] = req.BHS[1] & 0x0f // CSG and NSG of the request, T and C clear
	copy(p.BHS[8:16], req.BHS[8:16])
	copy(p.BHS[16:20], req.BHS[16:20])
	p.put32(24, statSN)
	p.put16(36, status)
	return p
}

// loginStep handles one login request; done means full feature phase.
func (c *conn) loginStep(ls *loginState, req *PDU) (resp *PDU, done bool, err error) {
	transit, cont := req.BHS[1]&0x80 != 0, req.BHS[1]&0x40 != 0
	csg, nsg := (req.BHS[1]>>2)&3, req.BHS[1]&3
	if req.BHS[3] > 0 || req.BHS[2] < req.BHS[3] {
		return nil, false, refuse(loginUnsupportedVer, "version %d..%d", req.BHS[3], req.BHS[2])
	}
	if ls.first {
		ls.first = false
		copy(c.isid[:], req.BHS[8:14])
		if req.u16(14) != 0 {
			return nil, false, refuse(loginSessionNotExist, "TSIH %d: adding connections is not supported", req.u16(14))
		}
		c.expCmdSN = req.u32(24)
		c.statSN = req.u32(28)
		ls.csg = csg
	}
	if csg != ls.csg || csg == 2 || csg == stageFullFeature {
		return nil, false, refuse(loginInvalidRequest, "stage %d, expected %d", csg, ls.csg)
	}
	if transit && (nsg <= csg || nsg == 2) {
		return nil, false, refuse(loginInvalidRequest, "transition from stage %d to %d", csg, nsg)
	}
	if len(ls.pending)+len(req.Data) > maxTextBytes {
		return nil, false, refuse(loginInitiatorError, "login text exceeds %d bytes", maxTextBytes)
	}
	ls.pending = append(ls.pending, req.Data...)
	resp = loginResponse(req, c.statSN, loginSuccess)
	resp.BHS[1] = csg << 2
	if cont {
		return resp, false, nil
	}
	pairs, err := ParseText(ls.pending)
	ls.pending = nil
	if err != nil {
		return nil, false, refuse(loginInitiatorError, "%v", err)
	}
	out, err := c.negotiateLogin(ls, pairs, csg)
	if err != nil {
		return nil, false, err
	}
	if ls.chapCfg == nil {
		ls.authDone = true
	}
	if csg == stageSecurity && transit && ls.chapCfg != nil && ls.chapStep == 0 {
		return nil, false, refuse(loginAuthFailure, "target requires CHAP, initiator offered no AuthMethod")
	}
	if csg == stageOperational && !ls.authDone {
		return nil, false, refuse(loginAuthFailure, "authentication required before operational negotiation")
	}
	if csg == stageOperational && !ls.sentOperational {
		ls.sentOperational = true
		out = append(out, textPair{"MaxRecvDataSegmentLength", strconv.Itoa(ourMaxRecvDataSegmentBytes)})
	}
	resp.Data = encodeText(out)
	if !transit || !ls.authDone {
		return resp, false, nil
	}
	resp.BHS[1] = 0x80 | csg<<2 | nsg
	ls.csg = nsg
	if nsg != stageFullFeature {
		return resp, false, nil
	}
	c.sess = &session{
		discovery:     ls.sessionType == "Discovery",
		target:        ls.target,
		initiatorName: ls.initiatorName,
		isid:          c.isid,
		nexus:         fmt.Sprintf("%s,i,0x%x", ls.initiatorName, c.isid[:]),
	}
	c.sess.tsih = c.srv.register(c)
	resp.put16(14, c.sess.tsih)
	return resp, true, nil
}

// negotiateLogin handles the keys of one login request and returns the
// keys to answer with.
func (c *conn) negotiateLogin(ls *loginState, pairs []textPair, csg byte) ([]textPair, error) {
	var out []textPair
	for _, kv := range pairs {
		switch kv.Key {
		case "InitiatorName":
			ls.initiatorName = kv.Value
		case "SessionType":
			if kv.Value != "Normal" && kv.Value != "Discovery" {
				return nil, refuse(loginInitiatorError, "SessionType %q", truncate(kv.Value, 40))
			}
			ls.sessionType = kv.Value
		case "TargetName":
			t := c.srv.targets[kv.Value]
			if t == nil {
				return nil, refuse(loginNotFound, "no target %q", truncate(kv.Value, 240))
			}
			ls.target = t
		}
	}
	if ls.initiatorName == "" {
		return nil, refuse(loginMissingParam, "no InitiatorName")
	}
	if ls.sessionType == "" {
		ls.sessionType = "Normal"
	}
	if ls.sessionType == "Normal" && ls.target == nil {
		return nil, refuse(loginMissingParam, "no TargetName in a normal session")
	}
	if ls.chapCfg == nil {
		if ls.sessionType == "Normal" {
			ls.chapCfg = ls.target.chap
		} else {
			ls.chapCfg = c.srv.cfg.DiscoveryCHAP
		}
	}
	for _, kv := range pairs {
		pair, err := c.negotiateKey(ls, kv, csg)
		if err != nil {
			return nil, err
		}
		out = append(out, pair...)
	}
	if err := c.finishCHAP(ls, pairs, &out); err != nil {
		return nil, err
	}
	if ls.sessionType == "Normal" && !ls.sentTPGT {
		ls.sentTPGT = true
		out = append(out, textPair{"TargetPortalGroupTag", "1"})
	}
	return out, nil
}

// finishCHAP checks CHAP_N and CHAP_R and answers a mutual challenge.
func (c *conn) finishCHAP(ls *loginState, pairs []textPair, out *[]textPair) error {
	get := func(k string) (string, bool) {
		for _, kv := range pairs {
			if kv.Key == k {
				return kv.Value, true
			}
		}
		return "", false
	}
	name, hasN := get("CHAP_N")
	resp, hasR := get("CHAP_R")
	if !hasN && !hasR {
		return nil
	}
	if ls.chapCfg == nil || ls.chapStep != 2 || !hasN || !hasR {
		return refuse(loginAuthFailure, "CHAP_N/CHAP_R out of sequence")
	}
	if err := c.verifyThrottled(ls, name, resp); err != nil {
		return err
	}
	id, hasI := get("CHAP_I")
	challenge, hasC := get("CHAP_C")
	if hasI != hasC {
		return refuse(loginAuthFailure, "mutual CHAP needs both CHAP_I and CHAP_C")
	}
	if hasI {
		answer, err := ls.chap.mutual(ls.chapCfg, id, challenge)
		if err != nil {
			return refuse(loginAuthFailure, "%v", err)
		}
		*out = append(*out, answer...)
	}
	ls.chapStep = 3
	ls.authDone = true
	return nil
}

// verifyThrottled checks a CHAP response after the wait the initiator's
// earlier failures earned (Config.AuthFailureDelay), and counts and logs
// a failure.
func (c *conn) verifyThrottled(ls *loginState, name, resp string) error {
	key := newAuthKey(ls.initiatorName, c.nc.RemoteAddr())
	now := time.Now()
	wait := max(c.srv.auth.reserve(key, now), c.srv.auth.reserve(key.hostKey(), now))
	if wait > 2*c.srv.cfg.AuthFailureDelayMax {
		c.log.Warn("CHAP login throttled", "initiator", ls.initiatorName, "wait", wait)
		return refuse(loginAuthFailure, "too many failed CHAP logins from %s: try again later", key.host)
	}
	if wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-c.ctx.Done():
			t.Stop()
			return c.ctx.Err()
		}
	}
	if err := ls.chap.verify(ls.chapCfg, name, resp); err != nil {
		now := time.Now()
		n, delay := c.srv.auth.failed(key, now)
		if _, hostDelay := c.srv.auth.failed(key.hostKey(), now); hostDelay > delay {
			delay = hostDelay
		}
		c.log.Warn("CHAP login failed", "initiator", ls.initiatorName, "user", truncate(name, 64),
			"discovery", ls.sessionType == "Discovery", "failures", n, "next_attempt_delay", delay)
		return refuse(loginAuthFailure, "user %q: %v", truncate(name, 64), err)
	}
	c.srv.auth.succeeded(key)
	return nil
}

func (c *conn) negotiateKey(ls *loginState, kv textPair, csg byte) ([]textPair, error) {
	one := func(v string) []textPair { return []textPair{{kv.Key, v}} }
	switch kv.Value {
	case "NotUnderstood", "Irrelevant", "Reject":
		return nil, nil
	}
	switch kv.Key {
	case "InitiatorName", "SessionType", "TargetName", "InitiatorAlias":
		return nil, nil
	case "AuthMethod", "CHAP_A", "CHAP_N", "CHAP_R", "CHAP_I", "CHAP_C":
		if csg != stageSecurity {
			return nil, refuse(loginInitiatorError, "%s outside the security stage", kv.Key)
		}
		return c.authKey(ls, kv)
	case "HeaderDigest", "DataDigest":
		for _, v := range strings.Split(kv.Value, ",") {
			if v == "None" || v == "CRC32C" {
				if kv.Key == "HeaderDigest" {
					ls.p.headerDigest = v == "CRC32C"
				} else {
					ls.p.dataDigest = v == "CRC32C"
				}
				return one(v), nil
			}
		}
		return one("Reject"), nil
	case "MaxRecvDataSegmentLength":
		n, ok := parseNumber(kv.Value, 512, 1<<24-1)
		if !ok {
			return one("Reject"), nil
		}
		ls.p.sendDataBytes = n
		return nil, nil
	case "MaxBurstLength", "FirstBurstLength":
		n, ok := parseNumber(kv.Value, 512, 1<<24-1)
		if !ok {
			return one("Reject"), nil
		}
		if kv.Key == "MaxBurstLength" {
			ls.p.maxBurstBytes = min(n, ourMaxBurstBytes)
			ls.p.firstBurstBytes = min(ls.p.firstBurstBytes, ls.p.maxBurstBytes)
			return one(strconv.Itoa(int(ls.p.maxBurstBytes))), nil
		}
		ls.p.firstBurstBytes = min(n, ourFirstBurstBytes, ls.p.maxBurstBytes)
		return one(strconv.Itoa(int(ls.p.firstBurstBytes))), nil
	case "InitialR2T", "ImmediateData", "DataPDUInOrder", "DataSequenceInOrder", "IFMarker", "OFMarker":
		if kv.Value != "Yes" && kv.Value != "No" {
			return one("Reject"), nil
		}
		yes := kv.Value == "Yes"
		switch kv.Key {
		case "InitialR2T":
			ls.p.initialR2T = yes // OR with the target's No
		case "ImmediateData":
			ls.p.immediateData = yes // AND with the target's Yes
		case "DataPDUInOrder", "DataSequenceInOrder":
			return one("Yes"), nil // OR with the target's Yes
		default:
			return one("No"), nil // markers are not supported
		}
		return one(kv.Value), nil
	case "MaxOutstandingR2T", "MaxConnections":
		if _, ok := parseNumber(kv.Value, 1, 65535); !ok {
			return one("Reject"), nil
		}
		return one("1"), nil
	case "ErrorRecoveryLevel":
		if _, ok := parseNumber(kv.Value, 0, 2); !ok {
			return one("Reject"), nil
		}
		return one("0"), nil
	case "DefaultTime2Wait", "DefaultTime2Retain":
		n, ok := parseNumber(kv.Value, 0, 3600)
		if !ok {
			return one("Reject"), nil
		}
		if kv.Key == "DefaultTime2Wait" {
			return one(strconv.Itoa(int(max(n, 2)))), nil
		}
		return one(strconv.Itoa(int(min(n, 20)))), nil
	case "OFMarkInt", "IFMarkInt":
		return one("Irrelevant"), nil
	case "TaskReporting":
		return one("RFC3720"), nil
	case "iSCSIProtocolLevel":
		n, ok := parseNumber(kv.Value, 0, 31)
		if !ok {
			return one("Reject"), nil
		}
		return one(strconv.Itoa(int(min(n, 1)))), nil
	}
	return one("NotUnderstood"), nil
}

func parseNumber(s string, lo, hi uint64) (uint32, bool) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n < lo || n > hi {
		return 0, false
	}
	return uint32(n), true
}

// authKey handles AuthMethod and the CHAP keys.
func (c *conn) authKey(ls *loginState, kv textPair) ([]textPair, error) {
	switch kv.Key {
	case "AuthMethod":
		methods := strings.Split(kv.Value, ",")
		if ls.chapCfg == nil {
			if slices.Contains(methods, "None") {
				ls.authDone = true
				return []textPair{{"AuthMethod", "None"}}, nil
			}
			return nil, refuse(loginAuthFailure, "initiator offers AuthMethod %q, target needs None", truncate(kv.Value, 40))
		}
		if !slices.Contains(methods, "CHAP") {
			return nil, refuse(loginAuthFailure, "target requires CHAP, initiator offers %q", truncate(kv.Value, 40))
		}
		ls.chapStep = 1
		return []textPair{{"AuthMethod", "CHAP"}}, nil
	case "CHAP_A":
		if ls.chapCfg == nil || ls.chapStep != 1 {
			return nil, refuse(loginAuthFailure, "CHAP_A out of sequence")
		}
		if !slices.Contains(strings.Split(kv.Value, ","), "5") {
			return nil, refuse(loginAuthFailure, "CHAP_A %q lacks MD5 (5)", truncate(kv.Value, 40))
		}
		st, err := newCHAPState()
		if err != nil {
			return nil, refuse(loginTargetError, "%v", err)
		}
		ls.chap, ls.chapStep = st, 2
		return []textPair{
			{"CHAP_A", "5"},
			{"CHAP_I", strconv.Itoa(int(st.id))},
			{"CHAP_C", "0x" + fmt.Sprintf("%x", st.challenge)},
		}, nil
	}
	return nil, nil // CHAP_N, CHAP_R, CHAP_I and CHAP_C: finishCHAP
}
