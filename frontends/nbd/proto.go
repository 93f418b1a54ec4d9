package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Wire constants from the NBD protocol
// (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md).
// Only what Drover speaks is named.
const (
	magicInit   = 0x4e42444d41474943 // "NBDMAGIC"
	magicOption = 0x49484156454f5054 // "IHAVEOPT"
	magicRepOpt = 0x0003e889045565a9 // option reply magic

	// Handshake flags (server) and client flags.
	handshakeFixedNewstyle = 1 << 0
	handshakeNoZeroes      = 1 << 1
	clientFixedNewstyle    = 1 << 0
	clientNoZeroes         = 1 << 1

	// Option types.
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8

	// Option reply types.
	repAck          = 1
	repServer       = 2
	repInfo         = 3
	repErrUnsup     = 1<<31 + 1
	repErrPolicy    = 1<<31 + 2
	repErrTLSReqd   = 1<<31 + 5
	repErrInvalid   = 1<<31 + 3
	repErrUnknown   = 1<<31 + 6
	repErrShutdown  = 1<<31 + 7
	repErrTooBig    = 1<<31 + 9
	infoExport      = 0
	infoName        = 1
	infoDescription = 2
	infoBlockSize   = 3

	// Transmission flags.
	flagHasFlags        = 1 << 0
	flagReadOnly        = 1 << 1
	flagSendFlush       = 1 << 2
	flagSendFUA         = 1 << 3
	flagSendTrim        = 1 << 5
	flagSendWriteZeroes = 1 << 6
	flagCanMultiConn    = 1 << 8

	// Request and simple reply magics.
	magicRequest = 0x25609513
	magicReply   = 0x67446698

	// Commands.
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6
	cmdBlockStatus = 7
	cmdResize      = 8

	// Command flags.
	cmdFlagFUA      = 1 << 0
	cmdFlagNoHole   = 1 << 1
	cmdFlagFastZero = 1 << 4

	// Error values in replies (Linux errno numbers, as the protocol fixes).
	errPerm     = 1
	errIO       = 5
	errInval    = 22
	errNoSpc    = 28
	errNotSup   = 95
	errShutdown = 108

	requestHeaderBytes = 28
	replyHeaderBytes   = 16
)

// ErrMalformed reports a request or option the protocol forbids; the
// server closes the connection it came on.
var ErrMalformed = errors.New("malformed NBD message")

// Request is a decoded transmission request header.
type Request struct {
	Flags  uint16
	Type   uint16
	Cookie uint64
	Offset uint64
	Length uint32
}

// ParseRequest decodes a 28-byte request header. It checks the magic
// and nothing about the command; ErrMalformed if the magic is wrong or b
// is too short.
func ParseRequest(b []byte) (Request, error) {
	if len(b) < requestHeaderBytes {
		return Request{}, fmt.Errorf("request header of %d bytes: %w", len(b), ErrMalformed)
	}
	if m := binary.BigEndian.Uint32(b[0:4]); m != magicRequest {
		return Request{}, fmt.Errorf("request magic %#x: %w", m, ErrMalformed)
	}
	return Request{
		Flags:  binary.BigEndian.Uint16(b[4:6]),
		Type:   binary.BigEndian.Uint16(b[6:8]),
		Cookie: binary.BigEndian.Uint64(b[8:16]),
		Offset: binary.BigEndian.Uint64(b[16:24]),
		Length: binary.BigEndian.Uint32(b[24:28]),
	}, nil
}

// AppendRequest appends r's wire form to b; it is ParseRequest's inverse.
func AppendRequest(b []byte, r Request) []byte {
	b = binary.BigEndian.AppendUint32(b, magicRequest)
	b = binary.BigEndian.AppendUint16(b, r.Flags)
	b = binary.BigEndian.AppendUint16(b, r.Type)
	b = binary.BigEndian.AppendUint64(b, r.Cookie)
	b = binary.BigEndian.AppendUint64(b, r.Offset)
	return binary.BigEndian.AppendUint32(b, r.Length)
}

// appendReply appends a simple reply header.
func appendReply(b []byte, errno uint32, cookie uint64) []byte {
	b = binary.BigEndian.AppendUint32(b, magicReply)
	b = binary.BigEndian.AppendUint32(b, errno)
	return binary.BigEndian.AppendUint64(b, cookie)
}

// appendOptionReply appends an option reply header and its data.
func appendOptionReply(b []byte, opt, typ uint32, data []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, magicRepOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}
