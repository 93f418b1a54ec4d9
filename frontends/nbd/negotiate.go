package nbd

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
)

// maxOptionBytes bounds an option's data; the longest valid one is an
// NBD_OPT_GO with a 4096-byte name and a few info requests.
const maxOptionBytes = 16 << 10

// errAborted ends a negotiation the client aborted with NBD_OPT_ABORT.
var errAborted = errors.New("client aborted negotiation")

// ErrNotFixedNewstyle rejects oldstyle and non-fixed newstyle clients.
var ErrNotFixedNewstyle = errors.New("client does not speak fixed newstyle negotiation (oldstyle and plain newstyle clients are not supported)")

// negotiate runs the fixed newstyle handshake and option haggling and
// returns the export the client chose with NBD_OPT_GO or
// NBD_OPT_EXPORT_NAME.
func (c *conn) negotiate() (*Export, error) {
	hello := binary.BigEndian.AppendUint64(nil, magicInit)
	hello = binary.BigEndian.AppendUint64(hello, magicOption)
	hello = binary.BigEndian.AppendUint16(hello, handshakeFixedNewstyle|handshakeNoZeroes)
	if err := c.send(hello); err != nil {
		return nil, fmt.Errorf("send handshake: %w", err)
	}
	var b [16]byte
	if _, err := io.ReadFull(c.r, b[:4]); err != nil {
		return nil, fmt.Errorf("read client flags: %w", err)
	}
	flags := binary.BigEndian.Uint32(b[:4])
	if flags&clientFixedNewstyle == 0 {
		return nil, fmt.Errorf("client flags %#x: %w", flags, ErrNotFixedNewstyle)
	}
	if flags&^uint32(clientFixedNewstyle|clientNoZeroes) != 0 {
		return nil, fmt.Errorf("client flags %#x set unknown bits: %w", flags, ErrMalformed)
	}
	c.noZeroes = flags&clientNoZeroes != 0
	c.log.Debug("nbd: client flags", "flags", flags)
	for {
		if _, err := io.ReadFull(c.r, b[:16]); err != nil {
			return nil, fmt.Errorf("read option header: %w", err)
		}
		if m := binary.BigEndian.Uint64(b[:8]); m != magicOption {
			return nil, fmt.Errorf("option magic %#x: %w", m, ErrMalformed)
		}
		opt, length := binary.BigEndian.Uint32(b[8:12]), binary.BigEndian.Uint32(b[12:16])
		c.log.Debug("nbd: option", "opt", opt, "length", length)
		exp, err := c.option(opt, length)
		if err != nil || exp != nil {
			return exp, err
		}
	}
}

// option handles one option; it returns an export once the client has
// chosen one, and an error when the connection must close.
func (c *conn) option(opt, length uint32) (*Export, error) {
	if length > maxOptionBytes {
		if opt == optExportName {
			return nil, fmt.Errorf("NBD_OPT_EXPORT_NAME of %d bytes: %w", length, ErrMalformed)
		}
		if _, err := io.CopyN(io.Discard, c.r, int64(length)); err != nil {
			return nil, fmt.Errorf("skip option %d data: %w", opt, err)
		}
		return nil, c.optReply(opt, repErrTooBig, []byte("option data too long"))
	}
	data := make([]byte, length)
	if _, err := io.ReadFull(c.r, data); err != nil {
		return nil, fmt.Errorf("read option %d data: %w", opt, err)
	}
	if c.s.isDraining() && opt != optAbort {
		return nil, c.optReply(opt, repErrShutdown, []byte("server shutting down"))
	}
	if c.tlsRequired() && opt != optStartTLS && opt != optAbort {
		if opt == optExportName {
			return nil, fmt.Errorf("NBD_OPT_EXPORT_NAME before NBD_OPT_STARTTLS: TLS is required")
		}
		return nil, c.optReply(opt, repErrTLSReqd, []byte("TLS is required: start it with NBD_OPT_STARTTLS (nbds:// URIs)"))
	}
	switch opt {
	case optExportName:
		return c.exportName(string(data))
	case optAbort:
		// The client may already have hung up; nothing is lost either way.
		_ = c.optReply(opt, repAck, nil)
		return nil, errAborted
	case optList:
		return nil, c.list(data)
	case optInfo, optGo:
		return c.infoGo(opt, data)
	case optStartTLS:
		return nil, c.startTLS(data)
	case optStructuredReply:
		return nil, c.optReply(opt, repErrUnsup, []byte("structured replies are not supported; simple replies only"))
	default:
		return nil, c.optReply(opt, repErrUnsup, fmt.Appendf(nil, "option %d is not supported", opt))
	}
}

// tlsRequired reports whether this connection must start TLS before
// anything else.
func (c *conn) tlsRequired() bool {
	if !c.s.cfg.TLSRequired || c.tlsStarted {
		return false
	}
	_, unix := c.nc.(*net.UnixConn)
	return !unix
}

// startTLS answers NBD_OPT_STARTTLS: an ACK, then the TLS handshake
// (under the handshake deadline), after which negotiation goes on inside
// TLS.
func (c *conn) startTLS(data []byte) error {
	switch {
	case c.s.cfg.TLS == nil:
		return c.optReply(optStartTLS, repErrPolicy, []byte("TLS is not configured on this server (--nbd-tls-cert/--nbd-tls-key)"))
	case c.tlsStarted:
		return c.optReply(optStartTLS, repErrInvalid, []byte("TLS already started"))
	case len(data) != 0:
		return c.optReply(optStartTLS, repErrInvalid, []byte("NBD_OPT_STARTTLS carries no data"))
	}
	if err := c.optReply(optStartTLS, repAck, nil); err != nil {
		return err
	}
	if c.r.Buffered() != 0 {
		return fmt.Errorf("client sent %d bytes after NBD_OPT_STARTTLS before the TLS handshake: %w", c.r.Buffered(), ErrMalformed)
	}
	tc := tls.Server(c.nc, c.s.cfg.TLS)
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	c.tlsStarted = true
	c.r = bufio.NewReaderSize(tc, ioBufferBytes)
	c.w = bufio.NewWriterSize(tc, ioBufferBytes)
	if st := tc.ConnectionState(); len(st.PeerCertificates) > 0 {
		c.log.Info("nbd: TLS started", "client", st.PeerCertificates[0].Subject.String())
	} else {
		c.log.Debug("nbd: TLS started")
	}
	return nil
}

// exportName ends negotiation the old way: no error can be returned to
// the client, so an unknown export closes the connection.
func (c *conn) exportName(name string) (*Export, error) {
	exp := c.s.exports[name]
	if exp == nil {
		return nil, fmt.Errorf("NBD_OPT_EXPORT_NAME: no export named %q", name)
	}
	b := binary.BigEndian.AppendUint64(nil, exp.Device.SizeBytes())
	b = binary.BigEndian.AppendUint16(b, transmissionFlags(exp))
	if !c.noZeroes {
		b = append(b, make([]byte, 124)...)
	}
	if err := c.send(b); err != nil {
		return nil, fmt.Errorf("reply to NBD_OPT_EXPORT_NAME: %w", err)
	}
	return exp, nil
}

func (c *conn) list(data []byte) error {
	if len(data) != 0 {
		return c.optReply(optList, repErrInvalid, []byte("NBD_OPT_LIST carries no data"))
	}
	for _, e := range c.s.order {
		b := binary.BigEndian.AppendUint32(nil, uint32(len(e.Name)))
		b = append(b, e.Name...)
		b = append(b, e.Description...)
		c.wbuf = appendOptionReply(c.wbuf, optList, repServer, b)
	}
	return c.optReply(optList, repAck, nil)
}

// infoGo answers NBD_OPT_INFO and NBD_OPT_GO: data is a name length, the
// name, a count of info requests and the requests.
func (c *conn) infoGo(opt uint32, data []byte) (*Export, error) {
	if len(data) < 6 {
		return nil, c.optReply(opt, repErrInvalid, []byte("option data too short"))
	}
	nameBytes := binary.BigEndian.Uint32(data[:4])
	if uint64(nameBytes)+6 > uint64(len(data)) {
		return nil, c.optReply(opt, repErrInvalid, []byte("export name length beyond option data"))
	}
	name := string(data[4 : 4+nameBytes])
	rest := data[4+nameBytes:]
	count := int(binary.BigEndian.Uint16(rest[:2]))
	if len(rest) != 2+2*count {
		return nil, c.optReply(opt, repErrInvalid, []byte("info request count does not match option length"))
	}
	exp := c.s.exports[name]
	if exp == nil {
		return nil, c.optReply(opt, repErrUnknown, fmt.Appendf(nil, "no export named %q", name))
	}
	var wantName, wantDesc bool
	for i := range count {
		switch binary.BigEndian.Uint16(rest[2+2*i:]) {
		case infoName:
			wantName = true
		case infoDescription:
			wantDesc = true
		}
	}
	// NBD_INFO_EXPORT is mandatory; block sizes are sent whether asked
	// for or not, as the protocol allows, so every client learns them.
	info := binary.BigEndian.AppendUint16(nil, infoExport)
	info = binary.BigEndian.AppendUint64(info, exp.Device.SizeBytes())
	info = binary.BigEndian.AppendUint16(info, transmissionFlags(exp))
	c.wbuf = appendOptionReply(c.wbuf, opt, repInfo, info)
	info = binary.BigEndian.AppendUint16(info[:0], infoBlockSize)
	info = binary.BigEndian.AppendUint32(info, exp.Device.MinBlockBytes())
	info = binary.BigEndian.AppendUint32(info, exp.Device.PreferredBlockBytes())
	info = binary.BigEndian.AppendUint32(info, c.s.cfg.MaxBlockBytes)
	c.wbuf = appendOptionReply(c.wbuf, opt, repInfo, info)
	if wantName {
		info = binary.BigEndian.AppendUint16(info[:0], infoName)
		c.wbuf = appendOptionReply(c.wbuf, opt, repInfo, append(info, exp.Name...))
	}
	if wantDesc && exp.Description != "" {
		info = binary.BigEndian.AppendUint16(info[:0], infoDescription)
		c.wbuf = appendOptionReply(c.wbuf, opt, repInfo, append(info, exp.Description...))
	}
	if err := c.optReply(opt, repAck, nil); err != nil {
		return nil, err
	}
	if opt == optGo {
		return exp, nil
	}
	return nil, nil
}

// optReply appends one option reply to whatever is queued in c.wbuf and
// sends it all.
func (c *conn) optReply(opt, typ uint32, data []byte) error {
	c.wbuf = appendOptionReply(c.wbuf, opt, typ, data)
	err := c.send(c.wbuf)
	c.wbuf = c.wbuf[:0]
	if err != nil {
		return fmt.Errorf("reply to option %d: %w", opt, err)
	}
	return nil
}

// send writes b and flushes; only negotiation uses it.
func (c *conn) send(b []byte) error {
	if _, err := c.w.Write(b); err != nil {
		return err
	}
	return c.w.Flush()
}

// transmissionFlags are the flags advertised for exp. CAN_MULTI_CONN holds
// because every connection to an export shares one Device, whose Flush
// makes every write acknowledged before it durable, whichever connection
// carried the write.
func transmissionFlags(exp *Export) uint16 {
	if exp.ReadOnly {
		return flagHasFlags | flagReadOnly | flagSendFlush | flagCanMultiConn
	}
	return flagHasFlags | flagSendFlush | flagSendFUA | flagSendTrim |
		flagSendWriteZeroes | flagCanMultiConn
}
