package fuzz

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/drover-io/drover/frontends/iscsi"
)

// FuzzISCSIReadPDU: ReadPDU never panics, refuses oversized data segments,
// and returns only ErrMalformed or stream errors.
func FuzzISCSIReadPDU(f *testing.F) {
	login := make([]byte, 48)
	login[0], login[1] = 0x43, 0x87
	text := []byte("InitiatorName=iqn.x\x00SessionType=Discovery\x00")
	binary.BigEndian.PutUint32(login[4:], uint32(len(text)))
	login[4] = 0
	seed := append(append(login, text...), make([]byte, (4-len(text)%4)%4)...)
	f.Add(seed, false, false)
	cmd := make([]byte, 48)
	cmd[0], cmd[1], cmd[4] = 0x01, 0xc0, 1
	f.Add(append(cmd, 0, 5, 1, 0, 1, 2, 3, 4), true, false)
	f.Add([]byte{}, false, true)
	f.Fuzz(func(t *testing.T, b []byte, hd, dd bool) {
		lim := iscsi.ReadLimits{MaxDataBytes: 8192, HeaderDigest: hd, DataDigest: dd}
		p, err := iscsi.ReadPDU(bytes.NewReader(b), lim)
		if err != nil {
			if !errors.Is(err, iscsi.ErrMalformed) && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		if len(p.Data) > 8192 {
			t.Fatalf("accepted a %d-byte data segment", len(p.Data))
		}
	})
}

// FuzzISCSIParseText: ParseText never panics and what it accepts has
// non-empty keys.
func FuzzISCSIParseText(f *testing.F) {
	f.Add([]byte("a=b\x00c=\x00"))
	f.Add([]byte("CHAP_A=5,7\x00"))
	f.Add([]byte("=x\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		pairs, err := iscsi.ParseText(b)
		if err != nil {
			return
		}
		for _, p := range pairs {
			if p.Key == "" {
				t.Fatalf("empty key accepted from %q", b)
			}
		}
	})
}

// FuzzISCSICDB: any CDB with any data-out never panics, and every CHECK
// CONDITION carries fixed-format sense data.
func FuzzISCSICDB(f *testing.F) {
	for _, cdb := range [][]byte{
		{0x12, 0, 0, 0, 0xff, 0},
		{0x12, 1, 0x83, 0, 0xff, 0},
		{0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0},
		{0x2a, 0x08, 0, 0, 0, 1, 0, 0, 1, 0},
		{0x41, 0x08, 0, 0, 0, 0, 0, 0, 8, 0},
		{0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0},
		{0x89, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0},
		{0x8b, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0},
		{0x5f, 0x00, 0, 0, 0, 0, 0, 0, 24, 0},
		{0x5e, 0x03, 0, 0, 0, 0, 0, 0x10, 0, 0},
		{0xa3, 0x0c, 0x82, 0x9e, 0, 0x10, 0, 0, 1, 0, 0, 0},
		{0x1a, 0, 0x3f, 0, 0xff, 0},
		{0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0},
	} {
		f.Add(cdb, bytes.Repeat([]byte{0xa5}, 1024), uint32(1024))
	}
	f.Fuzz(func(t *testing.T, cdb, data []byte, expected uint32) {
		if len(cdb) > 260 || len(data) > 1<<16 {
			return
		}
		lu, err := iscsi.NewLogicalUnit(&memDevice{data: make([]byte, 1<<16)}, "fuzz")
		if err != nil {
			t.Fatal(err)
		}
		res := lu.Execute(context.Background(), "iqn.fuzz,i,0x1", cdb, data, expected)
		if res.Status == 0x02 && (len(res.Sense) < 18 || res.Sense[0]&0x7f != 0x70) {
			t.Fatalf("CHECK CONDITION without fixed-format sense: %x", res.Sense)
		}
	})
}
