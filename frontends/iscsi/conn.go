package iscsi

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"time"

	"github.com/drover-io/drover/transports/device"
)

const (
	// cmdWindow is the number of non-immediate commands a session may
	// have outstanding; MaxCmdSN advertises what is left of it.
	cmdWindow = 128
	// maxTasks bounds all tasks of a connection, immediate ones included;
	// commands beyond it complete with BUSY.
	maxTasks = 2 * cmdWindow
	// maxDataOutBytes bounds the data-out buffer of one command: the
	// largest transfer the logical units advertise (Block Limits VPD);
	// no command needs more.
	maxDataOutBytes = maxTransferBytes
	// loginTimeout bounds the login phase, so idle sockets cannot hold a
	// connection slot.
	loginTimeout = 30 * time.Second
)

// conn is one iSCSI connection and, with MaxConnections=1, its session.
type conn struct {
	srv  *Server
	nc   net.Conn
	rd   *bufio.Reader
	log  *slog.Logger
	isid [6]byte
	sess *session
	p    params

	// sendMu serialises PDUs on the socket and guards statSN once the
	// full feature phase starts.
	sendMu sync.Mutex
	statSN uint32
	// bw buffers PDUs in the full feature phase; batching holds its
	// flushes for the reader's idle (async.go). Both under sendMu.
	bw       *bufio.Writer
	batching bool
	// asyncDevs are the devices the reader started commands on since its
	// last idle; the reader's alone.
	asyncDevs []device.Async

	mu       sync.Mutex
	expCmdSN uint32
	inflight uint32
	tasks    map[uint32]*task
	nextTTT  uint32

	// share is the connection's part of the server's buffer budget.
	share *device.Share
	// Responses of async commands (async.go), under qMu: queued by
	// completions, which never write to the socket; written by the
	// reader after a batch, or by a goroutine started for them.
	qMu        sync.Mutex
	queue      []queuedResp
	spareQueue []queuedResp
	inBatch    bool
	writing    bool
	writers    sync.WaitGroup

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // the task workers
	work   chan *task     // hands a task to an idle worker
}

func newConn(s *Server, nc net.Conn) *conn {
	return &conn{
		srv:   s,
		nc:    nc,
		rd:    bufio.NewReaderSize(nc, 64<<10),
		log:   s.log.With("remote", nc.RemoteAddr().String()),
		tasks: make(map[uint32]*task),
		work:  make(chan *task),
		share: s.budget.NewShare(s.cfg.MaxBytesInFlight),
	}
}

// serve runs the connection: login, then the full feature phase. Any
// protocol violation or panic ends this connection only.
func (c *conn) serve(ctx context.Context) {
	c.ctx, c.cancel = context.WithCancel(ctx)
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("connection handler panicked; dropping connection", "panic", r, "stack", string(debug.Stack()))
		}
		c.cancel()
		c.nc.Close()
		c.wg.Wait()
		c.writers.Wait()
		c.endSession()
	}()
	_ = c.nc.SetDeadline(time.Now().Add(loginTimeout))
	if err := c.login(); err != nil {
		if !errors.Is(err, io.EOF) {
			c.log.Info("login ended", "err", err)
		}
		return
	}
	_ = c.nc.SetDeadline(time.Time{})
	c.log = c.log.With("initiator", c.sess.initiatorName, "tsih", c.sess.tsih)
	c.log.Info("session started", "discovery", c.sess.discovery, "target", targetName(c.sess.target),
		"header_digest", c.p.headerDigest, "data_digest", c.p.dataDigest)
	err := c.fullFeature()
	switch {
	case err == nil, errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
		c.log.Info("session ended")
	default:
		c.log.Warn("connection dropped", "err", err)
	}
}

func targetName(t *target) string {
	if t == nil {
		return ""
	}
	return t.name
}

// endSession releases what the session held: SPC-2 reservations and unit
// attention state of its I_T nexus.
func (c *conn) endSession() {
	if c.sess == nil || c.sess.target == nil {
		return
	}
	for _, lu := range c.sess.target.luns {
		lu.NexusGone(c.sess.nexus)
	}
}

// fullFeature reads and dispatches PDUs until logout or error.
func (c *conn) fullFeature() error {
	lim := ReadLimits{MaxDataBytes: ourMaxRecvDataSegmentBytes, HeaderDigest: c.p.headerDigest, DataDigest: c.p.dataDigest}
	c.sendMu.Lock()
	c.bw = bufio.NewWriterSize(c.nc, 256<<10)
	c.sendMu.Unlock()
	defer c.idle()
	for {
		if !pduBuffered(c.rd, c.p.headerDigest, c.p.dataDigest) {
			c.idle() // never wait for the socket holding work or responses
		}
		p, err := ReadPDU(c.rd, lim)
		if err != nil {
			return fmt.Errorf("read PDU: %w", err)
		}
		c.startBatch()
		var done bool
		switch p.Opcode() {
		case opNOPOut:
			err = c.nopOut(p)
		case opSCSICmd:
			err = c.scsiCommand(p)
		case opDataOut:
			err = c.dataOut(p)
		case opTMFReq:
			err = c.taskManagement(p)
		case opTextReq:
			err = c.text(p)
		case opLogoutReq:
			done, err = c.logout(p)
		default:
			err = c.reject(p, 0x05) // command not supported (SNACK at ERL 0 included)
		}
		if err != nil {
			return err
		}
		if done {
			return nil
		}
	}
}

// sendMode says how a PDU carries StatSN.
type sendMode int

const (
	// withStatus assigns the next StatSN and advances it.
	withStatus sendMode = iota
	// withStatSN carries the current StatSN without advancing it.
	withStatSN
	// noStatSN leaves the StatSN field alone (Data-In without status).
	noStatSN
)

// send writes p with StatSN, ExpCmdSN and MaxCmdSN filled in.
func (c *conn) send(p *PDU, mode sendMode) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	switch mode {
	case withStatus:
		p.put32(24, c.statSN)
		c.statSN++
	case withStatSN:
		p.put32(24, c.statSN)
	}
	c.mu.Lock()
	exp, free := c.expCmdSN, uint32(cmdWindow)-min(c.inflight, cmdWindow)
	c.mu.Unlock()
	p.put32(28, exp)
	p.put32(32, exp+free-1)
	var err error
	if c.bw != nil {
		err = writePDU(c.bw, p, c.p.headerDigest, c.p.dataDigest)
		if err == nil && !c.batching {
			err = c.bw.Flush()
		}
	} else {
		err = writePDU(c.nc, p, c.p.headerDigest, c.p.dataDigest)
	}
	if err != nil {
		c.nc.Close() // a half-written PDU leaves the stream unusable
		return err
	}
	return nil
}

// acceptCmdSN checks a request's CmdSN against the window and advances
// ExpCmdSN for non-immediate requests. Requests outside the window are
// silently ignored, as RFC 7143 section 4.2.2.1 requires.
func (c *conn) acceptCmdSN(p *PDU, countInflight bool) bool {
	if p.Immediate() {
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	sn := p.u32(24)
	if sn != c.expCmdSN || c.inflight >= cmdWindow {
		c.log.Warn("command outside the CmdSN window ignored", "cmdsn", sn, "exp_cmdsn", c.expCmdSN, "inflight", c.inflight)
		return false
	}
	c.expCmdSN++
	if countInflight {
		c.inflight++
	}
	return true
}

func (c *conn) nopOut(p *PDU) error {
	if !c.acceptCmdSN(p, false) {
		return nil
	}
	if p.ITT() == reservedTag {
		return nil // a reply to a target ping, or a ping wanting no answer
	}
	r := &PDU{Data: p.Data}
	r.BHS[0] = opNOPIn
	r.BHS[1] = 0x80
	copy(r.BHS[8:20], p.BHS[8:20])
	r.put32(20, reservedTag)
	return c.send(r, withStatus)
}

// reject sends a Reject PDU carrying the offending header.
func (c *conn) reject(p *PDU, reason byte) error {
	c.log.Warn("PDU rejected", "opcode", fmt.Sprintf("%#x", p.Opcode()), "reason", reason)
	r := &PDU{Data: append([]byte(nil), p.BHS[:]...)}
	r.BHS[0] = opReject
	r.BHS[1] = 0x80
	r.BHS[2] = reason
	r.put32(16, reservedTag)
	return c.send(r, withStatus)
}

func (c *conn) logout(p *PDU) (bool, error) {
	reason := p.BHS[1] & 0x7f
	if !c.acceptCmdSN(p, false) {
		return false, nil
	}
	r := &PDU{}
	r.BHS[0] = opLogoutResp
	r.BHS[1] = 0x80
	copy(r.BHS[16:20], p.BHS[16:20])
	if reason > 2 {
		r.BHS[2] = 2 // connection recovery is not supported
	}
	// Let running commands finish so their responses precede the logout
	// response, as RFC 7143 section 11.14 asks.
	c.idle()
	c.waitTasks()
	if err := c.send(r, withStatus); err != nil {
		return false, err
	}
	return reason <= 2, nil
}

func (c *conn) waitTasks() {
	for {
		c.mu.Lock()
		var t *task
		for _, t = range c.tasks {
			break
		}
		c.mu.Unlock()
		if t == nil {
			return
		}
		<-t.done
	}
}

// text answers a Text request: SendTargets, and NotUnderstood for the rest.
func (c *conn) text(p *PDU) error {
	if !c.acceptCmdSN(p, false) {
		return nil
	}
	pairs, err := ParseText(p.Data)
	if err != nil {
		return err
	}
	var out []textPair
	for _, kv := range pairs {
		if kv.Key != "SendTargets" {
			out = append(out, textPair{kv.Key, "NotUnderstood"})
			continue
		}
		out = append(out, c.sendTargets(kv.Value)...)
	}
	r := &PDU{Data: encodeText(out)}
	if len(r.Data) > int(c.p.sendDataBytes) {
		return fmt.Errorf("text response of %d bytes exceeds the initiator's %d", len(r.Data), c.p.sendDataBytes)
	}
	r.BHS[0] = opTextResp
	r.BHS[1] = 0x80
	copy(r.BHS[8:20], p.BHS[8:20])
	r.put32(20, reservedTag)
	return c.send(r, withStatus)
}

func (c *conn) sendTargets(which string) []textPair {
	var out []textPair
	addr := c.nc.LocalAddr().String()
	for _, t := range c.srv.order {
		switch {
		case which == "All" && (c.sess.discovery || t == c.sess.target):
		case which == "" && !c.sess.discovery && t == c.sess.target:
		case which == t.name:
		default:
			continue
		}
		out = append(out, textPair{"TargetName", t.name}, textPair{"TargetAddress", addr + ",1"})
	}
	return out
}
