package device

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
)

// Re-encryption under a new data key. Rekey walks an encrypted volume's
// blocks in order (the volume served by nothing else meanwhile) and
// rewrites each under the new key, keeping a watermark: every block below
// RekeyState.NextBlock holds new-key ciphertext (or zeros), every block
// from NextBlock+len(Pending) on the old key's. The state is saved
// durably before a chunk is rewritten, naming each block of the chunk
// with digests of its old and its new ciphertext: after a crash between
// that save and the next, each block of the chunk holds one or the other
// (the volume writes whole blocks), and the digests say which, so a
// resumed Rekey finishes the chunk without ever decrypting a block with
// the wrong key. A block holding neither stops it with ErrRekeyDamaged.

// ErrRekeyDamaged is returned when a block of the chunk a rekey was
// rewriting holds neither its old nor its new ciphertext.
var ErrRekeyDamaged = errors.New("block holds neither its old nor its new ciphertext")

// RekeyDigestBytes is the length of a block's ciphertext digest.
const RekeyDigestBytes = 16

// RekeyBlock names one block of the chunk being rewritten by the digests
// of its ciphertext under each key; both zero for a block of zeros (which
// stays zeros).
type RekeyBlock struct {
	Old, New [RekeyDigestBytes]byte
}

// RekeyState is a rekey's progress, as it must be saved durably.
type RekeyState struct {
	// OldCheck and NewCheck are KeyCheck of the two keys.
	OldCheck, NewCheck []byte
	// TotalBlocks is the volume's size in blocks when the rekey began.
	TotalBlocks uint64
	// NextBlock is the watermark: every block below it is done.
	NextBlock uint64
	// Pending is the chunk [NextBlock, +len(Pending)) being rewritten.
	Pending []RekeyBlock
}

// RekeyOptions tune Rekey.
type RekeyOptions struct {
	// ChunkBlocks is how many blocks are rewritten per save (default 256,
	// 1 MiB).
	ChunkBlocks int
	// Save records the state durably; Rekey calls it before rewriting a
	// chunk, and once at the end.
	Save func(*RekeyState) error
	// Progress, when set, is told the blocks done after every chunk.
	Progress func(doneBlocks, totalBlocks uint64)
	// AfterChunk, when set, is called once a rewritten chunk is flushed
	// and before the state moves past it (a test's place to crash); an
	// error it returns stops Rekey there.
	AfterChunk func(nextBlock uint64) error
}

// NewRekeyState starts the state of a rekey from oldKey to newKey of a
// volume of sizeBytes.
func NewRekeyState(oldKey, newKey []byte, sizeBytes uint64) (*RekeyState, error) {
	if len(oldKey) != CryptKeyBytes || len(newKey) != CryptKeyBytes {
		return nil, fmt.Errorf("rekey: keys of %d and %d bytes: want %d", len(oldKey), len(newKey), CryptKeyBytes)
	}
	if bytes.Equal(oldKey, newKey) {
		return nil, errors.New("rekey: the new key is the old one")
	}
	if sizeBytes%CryptBlockBytes != 0 {
		return nil, fmt.Errorf("rekey: size %d is not a multiple of %d", sizeBytes, CryptBlockBytes)
	}
	return &RekeyState{OldCheck: KeyCheck(oldKey), NewCheck: KeyCheck(newKey), TotalBlocks: sizeBytes / CryptBlockBytes}, nil
}

// Rekey rewrites dev's blocks from st.NextBlock on under newKey (see
// above), saving st as it goes; it returns once every block is done and
// the final state saved. Nothing else may write dev meanwhile.
func Rekey(ctx context.Context, dev Device, oldKey, newKey []byte, st *RekeyState, opt RekeyOptions) error {
	if err := CheckKey(oldKey, st.OldCheck); err != nil {
		return fmt.Errorf("rekey: old key: %w", err)
	}
	if err := CheckKey(newKey, st.NewCheck); err != nil {
		return fmt.Errorf("rekey: new key: %w", err)
	}
	if got := dev.SizeBytes() / CryptBlockBytes; got != st.TotalBlocks {
		return fmt.Errorf("rekey: the volume has %d blocks, the rekey began on %d", got, st.TotalBlocks)
	}
	if st.NextBlock+uint64(len(st.Pending)) > st.TotalBlocks {
		return fmt.Errorf("rekey: watermark %d+%d beyond the volume's %d blocks", st.NextBlock, len(st.Pending), st.TotalBlocks)
	}
	if opt.ChunkBlocks <= 0 {
		opt.ChunkBlocks = 256
	}
	oldC, err := newXTS(oldKey)
	if err != nil {
		return fmt.Errorf("rekey: old key: %w", err)
	}
	newC, err := newXTS(newKey)
	if err != nil {
		return fmt.Errorf("rekey: new key: %w", err)
	}
	r := rekeyer{dev: dev, oldC: oldC, newC: newC, st: st, opt: opt}
	if len(st.Pending) > 0 {
		if err := r.settle(ctx); err != nil {
			return err
		}
	}
	for st.NextBlock < st.TotalBlocks {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(uint64(opt.ChunkBlocks), st.TotalBlocks-st.NextBlock)
		if err := r.chunk(ctx, n); err != nil {
			return err
		}
	}
	if err := opt.Save(st); err != nil {
		return fmt.Errorf("rekey: save: %w", err)
	}
	return nil
}

type rekeyer struct {
	dev        Device
	oldC, newC *xtsCipher
	st         *RekeyState
	opt        RekeyOptions
	buf        []byte
}

func digest(b []byte) (d [RekeyDigestBytes]byte) {
	sum := sha256.Sum256(b)
	copy(d[:], sum[:])
	return d
}

func (r *rekeyer) read(ctx context.Context, first, n uint64) ([]byte, error) {
	if uint64(cap(r.buf)) < n*CryptBlockBytes {
		r.buf = make([]byte, n*CryptBlockBytes)
	}
	b := r.buf[:n*CryptBlockBytes]
	if err := r.dev.ReadAt(ctx, b, first*CryptBlockBytes); err != nil {
		return nil, fmt.Errorf("rekey: read blocks [%d, +%d): %w", first, n, err)
	}
	return b, nil
}

// chunk rewrites the n blocks from the watermark: their digests saved
// first, then the new ciphertext written and flushed.
func (r *rekeyer) chunk(ctx context.Context, n uint64) error {
	first := r.st.NextBlock
	b, err := r.read(ctx, first, n)
	if err != nil {
		return err
	}
	pending := make([]RekeyBlock, n)
	rewrite := make([]bool, n)
	any := false
	for i := range n {
		blk := b[i*CryptBlockBytes : (i+1)*CryptBlockBytes]
		if allZero(blk) {
			continue
		}
		pending[i].Old = digest(blk)
		r.oldC.crypt(blk, blk, first+i, true)
		r.newC.crypt(blk, blk, first+i, false)
		pending[i].New = digest(blk)
		rewrite[i], any = true, true
	}
	if any {
		r.st.Pending = pending
		if err := r.opt.Save(r.st); err != nil {
			return fmt.Errorf("rekey: save: %w", err)
		}
		if err := r.write(ctx, b, first, rewrite); err != nil {
			return err
		}
	}
	return r.advance(n)
}

// settle finishes the pending chunk a crash interrupted: each block holds
// its old or its new ciphertext (or stayed zeros).
func (r *rekeyer) settle(ctx context.Context) error {
	first, n := r.st.NextBlock, uint64(len(r.st.Pending))
	b, err := r.read(ctx, first, n)
	if err != nil {
		return err
	}
	rewrite := make([]bool, n)
	for i, p := range r.st.Pending {
		blk := b[uint64(i)*CryptBlockBytes : uint64(i+1)*CryptBlockBytes]
		block := first + uint64(i)
		switch d := digest(blk); {
		case p == RekeyBlock{}:
			if !allZero(blk) {
				return fmt.Errorf("rekey: block %d was zeros and is not: %w", block, ErrRekeyDamaged)
			}
		case allZero(blk):
			return fmt.Errorf("rekey: block %d reads as zeros: %w", block, ErrRekeyDamaged)
		case d == p.New:
		case d == p.Old:
			r.oldC.crypt(blk, blk, block, true)
			r.newC.crypt(blk, blk, block, false)
			rewrite[i] = true
		default:
			return fmt.Errorf("rekey: block %d: %w", block, ErrRekeyDamaged)
		}
	}
	if err := r.write(ctx, b, first, rewrite); err != nil {
		return err
	}
	return r.advance(n)
}

// write writes the runs of blocks marked in rewrite and flushes them.
func (r *rekeyer) write(ctx context.Context, b []byte, first uint64, rewrite []bool) error {
	wrote := false
	for i := 0; i < len(rewrite); {
		if !rewrite[i] {
			i++
			continue
		}
		j := i
		for j < len(rewrite) && rewrite[j] {
			j++
		}
		off := (first + uint64(i)) * CryptBlockBytes
		if err := r.dev.WriteAt(ctx, b[i*CryptBlockBytes:j*CryptBlockBytes], off, false); err != nil {
			return fmt.Errorf("rekey: write blocks [%d, %d): %w", first+uint64(i), first+uint64(j), err)
		}
		wrote = true
		i = j
	}
	if !wrote {
		return nil
	}
	if err := r.dev.Flush(ctx); err != nil {
		return fmt.Errorf("rekey: flush: %w", err)
	}
	return nil
}

func (r *rekeyer) advance(n uint64) error {
	if r.opt.AfterChunk != nil && len(r.st.Pending) > 0 {
		if err := r.opt.AfterChunk(r.st.NextBlock + n); err != nil {
			return err
		}
	}
	r.st.NextBlock += n
	r.st.Pending = nil
	if r.opt.Progress != nil {
		r.opt.Progress(r.st.NextBlock, r.st.TotalBlocks)
	}
	return nil
}
