package device

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
)

// rekeyFixture is a file of 40 blocks encrypted with the old key: blocks
// 3..30 and 37 hold a pattern, the rest zeros.
func rekeyFixture(t *testing.T) (path string, pattern func(block int) []byte, written func(block int) bool) {
	t.Helper()
	e, path := encryptedFile(t, 40*CryptBlockBytes, testKey(1))
	pattern = func(block int) []byte {
		return bytes.Repeat([]byte(fmt.Sprintf("block %04d pattern ", block)), CryptBlockBytes/18+1)[:CryptBlockBytes]
	}
	written = func(block int) bool { return block >= 3 && block <= 30 || block == 37 }
	ctx := context.Background()
	for b := range 40 {
		if written(b) {
			if err := e.WriteAt(ctx, pattern(b), uint64(b)*CryptBlockBytes, false); err != nil {
				t.Fatal(err)
			}
		}
	}
	return path, pattern, written
}

// checkRekeyed reads every block through the new key and checks the
// file holds no block's old-key ciphertext.
func checkRekeyed(t *testing.T, path string, pattern func(int) []byte, written func(int) bool) {
	t.Helper()
	f, err := OpenFile(path, FileConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	e, err := NewEncrypted(f, testKey(2))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	oldC, _ := newXTS(testKey(1))
	buf := make([]byte, CryptBlockBytes)
	for b := range 40 {
		if err := e.ReadAt(context.Background(), buf, uint64(b)*CryptBlockBytes); err != nil {
			t.Fatal(err)
		}
		want := make([]byte, CryptBlockBytes)
		if written(b) {
			want = pattern(b)
			old := make([]byte, CryptBlockBytes)
			oldC.crypt(old, want, uint64(b), false)
			if bytes.Contains(raw, old[:64]) {
				t.Errorf("block %d: the file still holds its old-key ciphertext", b)
			}
		}
		if !bytes.Equal(buf, want) {
			t.Errorf("block %d reads %q, want %q", b, buf[:24], want[:24])
		}
	}
}

func openRaw(t *testing.T, path string) *File {
	t.Helper()
	f, err := OpenFile(path, FileConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

var errCrash = errors.New("crash")

// TestRekeyResumes: a rekey stopped after any chunk (its state saved,
// some of the chunk's blocks back at their old ciphertext as a crash
// might leave them) resumes from the saved state and ends with every
// block under the new key and no old-key ciphertext left.
func TestRekeyResumes(t *testing.T) {
	for _, crashAfter := range []uint64{8, 16, 32, 40} {
		t.Run(fmt.Sprint(crashAfter), func(t *testing.T) {
			path, pattern, written := rekeyFixture(t)
			f := openRaw(t, path)
			st, err := NewRekeyState(testKey(1), testKey(2), f.SizeBytes())
			if err != nil {
				t.Fatal(err)
			}
			var saved RekeyState
			save := func(s *RekeyState) error {
				saved = *s
				saved.Pending = append([]RekeyBlock(nil), s.Pending...)
				return nil
			}
			var oldCopy []byte // the pending chunk's old ciphertext, taken before it is rewritten
			opt := RekeyOptions{ChunkBlocks: 8, Save: func(s *RekeyState) error {
				oldCopy = make([]byte, len(s.Pending)*CryptBlockBytes)
				if err := f.ReadAt(context.Background(), oldCopy, s.NextBlock*CryptBlockBytes); err != nil {
					return err
				}
				return save(s)
			}, AfterChunk: func(next uint64) error {
				if next == crashAfter {
					return errCrash
				}
				return nil
			}}
			if err := Rekey(context.Background(), f, testKey(1), testKey(2), st, opt); !errors.Is(err, errCrash) {
				t.Fatalf("Rekey = %v, want the crash", err)
			}
			if len(saved.Pending) == 0 {
				t.Fatalf("the crash after block %d left no pending chunk", crashAfter)
			}
			// The crash lost the writes to every other block of the chunk.
			for i := 0; i < len(saved.Pending); i += 2 {
				off := (saved.NextBlock + uint64(i)) * CryptBlockBytes
				if err := f.WriteAt(context.Background(), oldCopy[i*CryptBlockBytes:(i+1)*CryptBlockBytes], off, false); err != nil {
					t.Fatal(err)
				}
			}
			// A wrong key does not resume it.
			resumed := saved
			if err := Rekey(context.Background(), f, testKey(3), testKey(2), &resumed, RekeyOptions{Save: save}); !errors.Is(err, ErrWrongKey) {
				t.Fatalf("resume with a wrong old key = %v, want ErrWrongKey", err)
			}
			resumed = saved
			if err := Rekey(context.Background(), f, testKey(1), testKey(2), &resumed, RekeyOptions{ChunkBlocks: 8, Save: save}); err != nil {
				t.Fatal(err)
			}
			if saved.NextBlock != 40 || len(saved.Pending) != 0 {
				t.Fatalf("final state at %d with %d pending, want 40 and none", saved.NextBlock, len(saved.Pending))
			}
			checkRekeyed(t, path, pattern, written)
		})
	}
}

// TestRekeyRefusesDamage: a block of the pending chunk that holds
// neither ciphertext stops the resume with ErrRekeyDamaged, and a new key
// equal to the old one is refused.
func TestRekeyRefusesDamage(t *testing.T) {
	path, _, _ := rekeyFixture(t)
	f := openRaw(t, path)
	if _, err := NewRekeyState(testKey(1), testKey(1), f.SizeBytes()); err == nil {
		t.Fatal("a rekey to the same key was accepted")
	}
	st, err := NewRekeyState(testKey(1), testKey(2), f.SizeBytes())
	if err != nil {
		t.Fatal(err)
	}
	var saved RekeyState
	opt := RekeyOptions{ChunkBlocks: 8, Save: func(s *RekeyState) error {
		saved = *s
		saved.Pending = append([]RekeyBlock(nil), s.Pending...)
		return nil
	}, AfterChunk: func(uint64) error { return errCrash }}
	if err := Rekey(context.Background(), f, testKey(1), testKey(2), st, opt); !errors.Is(err, errCrash) {
		t.Fatalf("Rekey = %v, want the crash", err)
	}
	junk := bytes.Repeat([]byte{0xa5}, CryptBlockBytes)
	if err := f.WriteAt(context.Background(), junk, (saved.NextBlock+4)*CryptBlockBytes, false); err != nil {
		t.Fatal(err)
	}
	opt.AfterChunk = nil
	if err := Rekey(context.Background(), f, testKey(1), testKey(2), &saved, opt); !errors.Is(err, ErrRekeyDamaged) {
		t.Fatalf("resume over a damaged block = %v, want ErrRekeyDamaged", err)
	}
}

// TestRekeyOnline: writers (whole blocks, partial blocks, trims) and
// their read-backs go on while the rekey runs over the same Encrypted;
// every read returns what its writer wrote last, and afterwards the file
// opened with the new key alone holds every block's last content.
func TestRekeyOnline(t *testing.T) {
	const blocks = 96
	e0, path := encryptedFile(t, blocks*CryptBlockBytes, testKey(1))
	ctx := context.Background()
	last := make([][]byte, blocks)
	for b := range blocks {
		last[b] = make([]byte, CryptBlockBytes)
		if b%3 != 0 {
			last[b] = bytes.Repeat([]byte{byte(b)}, CryptBlockBytes)
			if err := e0.WriteAt(ctx, last[b], uint64(b)*CryptBlockBytes, false); err != nil {
				t.Fatal(err)
			}
		}
	}
	f := openRaw(t, path)
	st, err := NewRekeyState(testKey(1), testKey(2), f.SizeBytes())
	if err != nil {
		t.Fatal(err)
	}
	saves := 0
	// Every step waits, outside the lock, for the writers to do more IO,
	// so that IO and rekey steps interleave throughout.
	var ops, writing atomic.Int64
	const writers = 4
	writing.Store(writers)
	progress := func(uint64, uint64) {
		for want := ops.Load() + 2; ops.Load() < want && writing.Load() > 0; {
			runtime.Gosched()
		}
	}
	e, err := NewRekeying(f, testKey(1), testKey(2), st, RekeyOptions{ChunkBlocks: 4, Progress: progress,
		Save: func(*RekeyState) error { saves++; return nil }})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.SettleRekey(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.Rekey(ctx) }()
	errs := make(chan error, writers)
	for w := range writers {
		go func() {
			defer writing.Add(-1)
			errs <- func() error {
				buf := make([]byte, CryptBlockBytes)
				for round := range 30 {
					for b := w; b < blocks; b += writers {
						off := uint64(b) * CryptBlockBytes
						switch (round + b) % 3 {
						case 0:
							last[b] = bytes.Repeat([]byte{byte(round), byte(b)}, CryptBlockBytes/2)
							if err := e.WriteAt(ctx, last[b], off, false); err != nil {
								return err
							}
						case 1:
							patch := []byte(fmt.Sprintf("r%d", round))
							copy(last[b][100:], patch)
							if err := e.WriteAt(ctx, patch, off+100, false); err != nil {
								return err
							}
						case 2:
							if round%5 == 0 {
								clear(last[b])
								if err := e.Trim(ctx, off, CryptBlockBytes, false); err != nil {
									return err
								}
							}
						}
						if err := e.ReadAt(ctx, buf, off); err != nil {
							return err
						}
						ops.Add(1)
						if !bytes.Equal(buf, last[b]) {
							return fmt.Errorf("round %d block %d reads %x..., want %x...", round, b, buf[:8], last[b][:8])
						}
					}
				}
				return nil
			}()
		}()
	}
	for range writers {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if saves < blocks/4 {
		t.Errorf("%d saves for %d chunks", saves, blocks/4)
	}
	f2 := openRaw(t, path)
	e2, err := NewEncrypted(f2, testKey(2))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, CryptBlockBytes)
	for b := range blocks {
		if err := e2.ReadAt(ctx, buf, uint64(b)*CryptBlockBytes); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, last[b]) {
			t.Errorf("after the rekey, block %d reads %x... with the new key, want %x...", b, buf[:8], last[b][:8])
		}
	}
}
