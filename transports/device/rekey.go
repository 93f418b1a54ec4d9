package device

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
)

// Re-encryption under a new data key. A rekey walks an encrypted
// volume's blocks in order and rewrites each under the new key, keeping a
// watermark: every block below RekeyState.NextBlock holds new-key
// ciphertext (or zeros), every block from NextBlock+len(Pending) on the
// old key's. The state is saved durably before a chunk is rewritten,
// naming each block of the chunk by digests of its old and its new
// ciphertext, and again once the chunk is written and flushed, before the
// watermark the frontends see moves past it. After a crash between those
// two saves each block of the chunk holds one or the other (the volume
// writes whole blocks), and the digests say which, so SettleRekey
// finishes the chunk without ever decrypting a block with the wrong key;
// a block holding neither stops it with ErrRekeyDamaged.
//
// An Encrypted made by NewRekeying serves IO during the pass: each step
// holds its lock (W) from reading a chunk until the watermark moved past
// it, so an IO sees every block under exactly one key, the one the saved
// watermark gives it.

// ErrRekeyDamaged is returned when a block of the chunk a rekey was
// rewriting holds neither its old nor its new ciphertext.
var ErrRekeyDamaged = errors.New("block holds neither its old nor its new ciphertext")

// RekeyDigestBytes is the length of a block's ciphertext digest.
const RekeyDigestBytes = 16

// rekeyZeroChunks bounds the chunks of zeros one step passes over
// (holding IO off) before it saves the watermark.
const rekeyZeroChunks = 16

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

// RekeyOptions tune a rekey.
type RekeyOptions struct {
	// ChunkBlocks is how many blocks are rewritten per step (default 256,
	// 1 MiB).
	ChunkBlocks int
	// Save records the state durably. It is called with the device's IO
	// held off.
	Save func(*RekeyState) error
	// Progress, when set, is told the blocks done after every step.
	Progress func(doneBlocks, totalBlocks uint64)
	// AfterChunk, when set, is called once a rewritten chunk is flushed
	// and before the state moves past it (a test's place to crash); an
	// error it returns stops the rekey there, as a failure would.
	AfterChunk func(nextBlock uint64) error
}

// rekeyMark is an Encrypted's rekey under way.
type rekeyMark struct {
	newC *xtsCipher
	next uint64 // the saved watermark: blocks below it are under newC
	st   *RekeyState
	opt  RekeyOptions
	buf  []byte
	// failed is set when a step failed after saving: the saved state
	// may name blocks IO would now decrypt with the wrong key, so every
	// IO fails until a restart resumes from the saved state.
	failed error
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

// NewRekeying returns an Encrypted over inner in the middle of a rekey
// from oldKey to newKey at st (new from NewRekeyState, or as last saved).
// The blocks of st's pending chunk are unknown until SettleRekey: serve
// nothing before it returns.
func NewRekeying(inner Device, oldKey, newKey []byte, st *RekeyState, opt RekeyOptions) (*Encrypted, error) {
	if err := CheckKey(oldKey, st.OldCheck); err != nil {
		return nil, fmt.Errorf("rekey: old key: %w", err)
	}
	if err := CheckKey(newKey, st.NewCheck); err != nil {
		return nil, fmt.Errorf("rekey: new key: %w", err)
	}
	if got := inner.SizeBytes() / CryptBlockBytes; got != st.TotalBlocks {
		return nil, fmt.Errorf("rekey: the volume has %d blocks, the rekey began on %d", got, st.TotalBlocks)
	}
	if st.NextBlock+uint64(len(st.Pending)) > st.TotalBlocks {
		return nil, fmt.Errorf("rekey: watermark %d+%d beyond the volume's %d blocks", st.NextBlock, len(st.Pending), st.TotalBlocks)
	}
	if opt.Save == nil {
		return nil, errors.New("rekey: no Save")
	}
	if opt.ChunkBlocks <= 0 {
		opt.ChunkBlocks = 256
	}
	e, err := NewEncrypted(inner, oldKey)
	if err != nil {
		return nil, err
	}
	newC, err := newXTS(newKey)
	if err != nil {
		return nil, fmt.Errorf("rekey: new key: %w", err)
	}
	e.rk = &rekeyMark{newC: newC, next: st.NextBlock, st: st, opt: opt}
	return e, nil
}

// Rekey rewrites dev's blocks under newKey from st on (see above), with
// nothing else using dev, saving st as it goes; it returns once every
// block is done and the final state saved.
func Rekey(ctx context.Context, dev Device, oldKey, newKey []byte, st *RekeyState, opt RekeyOptions) error {
	e, err := NewRekeying(dev, oldKey, newKey, st, opt)
	if err != nil {
		return err
	}
	if err := e.SettleRekey(ctx); err != nil {
		return err
	}
	return e.Rekey(ctx)
}

// Rekey runs the rekey NewRekeying set up to its end, while IO goes on;
// when it returns nil every block is under the new key (and e encrypts
// with it alone). An error leaves the saved state to resume from.
// A step begun runs to its end even if ctx ends meanwhile.
func (e *Encrypted) Rekey(ctx context.Context) error {
	e.mu.RLock()
	var progress func(uint64, uint64)
	if e.rk != nil {
		progress = e.rk.opt.Progress
	}
	e.mu.RUnlock()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		done, total, finished, err := e.rekeyStep(context.WithoutCancel(ctx))
		if err != nil {
			return err
		}
		if progress != nil && total > 0 {
			progress(done, total)
		}
		if finished {
			return nil
		}
	}
}

// RekeyFailed returns the error that stopped e's rekey after it had saved
// state, if one did (e then refuses IO).
func (e *Encrypted) RekeyFailed() error {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.rk == nil {
		return nil
	}
	return e.rk.failed
}

// SettleRekey finishes the chunk a crash interrupted, if the saved state
// names one: each of its blocks holds its old or its new ciphertext (or
// stayed zeros).
func (e *Encrypted) SettleRekey(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	rk := e.rk
	if rk == nil || len(rk.st.Pending) == 0 {
		return nil
	}
	st := rk.st
	first, n := st.NextBlock, uint64(len(st.Pending))
	b, err := rk.read(ctx, e.inner, first, n)
	if err != nil {
		return rk.fail(err)
	}
	rewrite := make([]bool, n)
	for i, p := range st.Pending {
		blk := b[uint64(i)*CryptBlockBytes : uint64(i+1)*CryptBlockBytes]
		block := first + uint64(i)
		switch d := digest(blk); {
		case p == RekeyBlock{}:
			if !allZero(blk) {
				return rk.fail(fmt.Errorf("rekey: block %d was zeros and is not: %w", block, ErrRekeyDamaged))
			}
		case allZero(blk):
			return rk.fail(fmt.Errorf("rekey: block %d reads as zeros: %w", block, ErrRekeyDamaged))
		case d == p.New:
		case d == p.Old:
			e.c.crypt(blk, blk, block, true)
			rk.newC.crypt(blk, blk, block, false)
			rewrite[i] = true
		default:
			return rk.fail(fmt.Errorf("rekey: block %d: %w", block, ErrRekeyDamaged))
		}
	}
	if err := rk.write(ctx, e.inner, b, first, rewrite); err != nil {
		return rk.fail(err)
	}
	return e.rekeyAdvance(first + n)
}

// rekeyStep, holding IO off, passes over up to rekeyZeroChunks chunks of
// zeros and rewrites the next chunk that is not, then saves the
// watermark past them and moves it.
func (e *Encrypted) rekeyStep(ctx context.Context) (done, total uint64, finished bool, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	rk := e.rk
	if rk == nil {
		return 0, 0, true, nil
	}
	if rk.failed != nil {
		return 0, 0, false, rk.failed
	}
	st := rk.st
	total = st.TotalBlocks
	next := st.NextBlock
	for range rekeyZeroChunks {
		if next >= total {
			break
		}
		n := min(uint64(rk.opt.ChunkBlocks), total-next)
		b, err := rk.read(ctx, e.inner, next, n)
		if err != nil {
			return 0, total, false, err // nothing saved yet, or saved as a chunk ended
		}
		pending, rewrite := rk.reencrypt(e.c, b, next)
		if pending == nil {
			next += n
			continue
		}
		st.NextBlock, st.Pending = next, pending
		if err := rk.opt.Save(st); err != nil {
			return 0, total, false, rk.fail(fmt.Errorf("rekey: save: %w", err))
		}
		if err := rk.write(ctx, e.inner, b, next, rewrite); err != nil {
			return 0, total, false, rk.fail(err)
		}
		next += n
		break
	}
	if err := e.rekeyAdvance(next); err != nil {
		return 0, total, false, err
	}
	return next, total, next == total, nil
}

// rekeyAdvance saves the watermark at next (the pending chunk, if any,
// written and flushed) and moves the one IO sees; at the end e keeps the
// new key alone. mu is held (W).
func (e *Encrypted) rekeyAdvance(next uint64) error {
	rk := e.rk
	st := rk.st
	if len(st.Pending) > 0 && rk.opt.AfterChunk != nil {
		if err := rk.opt.AfterChunk(next); err != nil {
			return rk.fail(err)
		}
	}
	st.NextBlock, st.Pending = next, nil
	if err := rk.opt.Save(st); err != nil {
		return rk.fail(fmt.Errorf("rekey: save: %w", err))
	}
	rk.next = next
	if next == st.TotalBlocks {
		e.c, e.rk = rk.newC, nil
	}
	return nil
}

// fail makes err stick: IO is refused from now on.
func (rk *rekeyMark) fail(err error) error {
	rk.failed = err
	return err
}

func digest(b []byte) (d [RekeyDigestBytes]byte) {
	sum := sha256.Sum256(b)
	copy(d[:], sum[:])
	return d
}

func (rk *rekeyMark) read(ctx context.Context, dev Device, first, n uint64) ([]byte, error) {
	if uint64(cap(rk.buf)) < n*CryptBlockBytes {
		rk.buf = make([]byte, n*CryptBlockBytes)
	}
	b := rk.buf[:n*CryptBlockBytes]
	if err := dev.ReadAt(ctx, b, first*CryptBlockBytes); err != nil {
		return nil, fmt.Errorf("rekey: read blocks [%d, +%d): %w", first, n, err)
	}
	return b, nil
}

// reencrypt turns b's blocks (from block first, under oldC) into
// new-key ciphertext in place and returns their digests and which need
// writing; nil if every block is zeros.
func (rk *rekeyMark) reencrypt(oldC *xtsCipher, b []byte, first uint64) ([]RekeyBlock, []bool) {
	n := uint64(len(b) / CryptBlockBytes)
	pending := make([]RekeyBlock, n)
	rewrite := make([]bool, n)
	any := false
	for i := range n {
		blk := b[i*CryptBlockBytes : (i+1)*CryptBlockBytes]
		if allZero(blk) {
			continue
		}
		pending[i].Old = digest(blk)
		oldC.crypt(blk, blk, first+i, true)
		rk.newC.crypt(blk, blk, first+i, false)
		pending[i].New = digest(blk)
		rewrite[i], any = true, true
	}
	if !any {
		return nil, nil
	}
	return pending, rewrite
}

// write writes the runs of blocks marked in rewrite and flushes them.
func (rk *rekeyMark) write(ctx context.Context, dev Device, b []byte, first uint64, rewrite []bool) error {
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
		if err := dev.WriteAt(ctx, b[i*CryptBlockBytes:j*CryptBlockBytes], off, false); err != nil {
			return fmt.Errorf("rekey: write blocks [%d, %d): %w", first+uint64(i), first+uint64(j), err)
		}
		wrote = true
		i = j
	}
	if !wrote {
		return nil
	}
	if err := dev.Flush(ctx); err != nil {
		return fmt.Errorf("rekey: flush: %w", err)
	}
	return nil
}

// Rekeying reports whether e's rekey is under way (blocks under two
// keys).
func (e *Encrypted) Rekeying() bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.rk != nil
}
