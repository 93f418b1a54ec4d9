package device

import (
	"bytes"
	"context"
	"crypto/aes"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/crypto/xts"

	"github.com/drover-io/drover/transports/testenv"
)

func testKey(seed byte) []byte {
	k := make([]byte, CryptKeyBytes)
	for i := range k {
		k[i] = seed + byte(i*7)
	}
	return k
}

// encryptedFile is an Encrypted over a File of sizeBytes, and the file's
// path (the ciphertext).
func encryptedFile(t *testing.T, sizeBytes uint64, key []byte) (*Encrypted, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "dev")
	f, err := OpenFile(path, FileConfig{SizeBytes: sizeBytes})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	e, err := NewEncrypted(f, key)
	if err != nil {
		t.Fatal(err)
	}
	return e, path
}

// TestEncryptedRoundTrip: aligned and unaligned writes read back, the
// file holds none of the plaintext, zeroed and trimmed ranges (whole and
// partial blocks) read as zeros, and another key reads something else.
func TestEncryptedRoundTrip(t *testing.T) {
	ctx := context.Background()
	e, path := encryptedFile(t, 1<<20, testKey(1))
	pattern := bytes.Repeat([]byte("SECRET-PATTERN-"), 4096)[:3*4096]
	if err := e.WriteAt(ctx, pattern, 8192, false); err != nil {
		t.Fatal(err)
	}
	odd := bytes.Repeat([]byte("ODDWRITE"), 128) // 1 KiB at 512: one partial block
	if err := e.WriteAt(ctx, odd, 65536+512, true); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(pattern))
	if err := e.ReadAt(ctx, got, 8192); err != nil || !bytes.Equal(got, pattern) {
		t.Fatalf("aligned read back: %v", err)
	}
	got = make([]byte, 2048)
	if err := e.ReadAt(ctx, got, 65536); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[512:1536], odd) || !allZero(got[:512]) || !allZero(got[1536:]) {
		t.Fatalf("unaligned write read back wrong")
	}
	if err := e.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte("SECRET-PATTERN")) || bytes.Contains(raw, []byte("ODDWRITE")) {
		t.Fatal("the plaintext is in the backing file")
	}
	// Zero a range that starts and ends inside blocks, and trim a whole one.
	if err := e.WriteZeroes(ctx, 8192+100, 4096+200, false); err != nil {
		t.Fatal(err)
	}
	if err := e.Trim(ctx, 16384, 4096, false); err != nil {
		t.Fatal(err)
	}
	got = make([]byte, len(pattern))
	if err := e.ReadAt(ctx, got, 8192); err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(pattern)
	clear(want[100 : 100+4096+200])
	clear(want[8192:])
	if !bytes.Equal(got, want) {
		t.Fatal("zeroed and trimmed ranges read back wrong")
	}
	other, err := NewEncrypted(e.inner, testKey(2))
	if err != nil {
		t.Fatal(err)
	}
	if err := other.ReadAt(ctx, got[:4096], 8192); err != nil || bytes.Equal(got[:4096], want[:4096]) {
		t.Fatalf("another key read the plaintext: %v", err)
	}
	if err := CheckKey(testKey(2), KeyCheck(testKey(1))); !errors.Is(err, ErrWrongKey) {
		t.Errorf("CheckKey with another key: %v", err)
	}
	if err := CheckKey(testKey(1), KeyCheck(testKey(1))); err != nil {
		t.Errorf("CheckKey with the key: %v", err)
	}
	if _, err := NewEncrypted(e.inner, make([]byte, 32)); err == nil {
		t.Error("a 32-byte key was accepted")
	}
	if err := e.ReadAt(ctx, make([]byte, 4096), 1<<20); !errors.Is(err, ErrInvalid) {
		t.Errorf("read beyond the end: %v", err)
	}
}

// TestXTSMatchesXCrypto: the XTS implementation gives what
// golang.org/x/crypto/xts gives, both ways, for many data units.
func TestXTSMatchesXCrypto(t *testing.T) {
	key := testKey(9)
	ref, err := xts.NewCipher(aes.NewCipher, key)
	if err != nil {
		t.Fatal(err)
	}
	fast, err := newXTS(key)
	if err != nil {
		t.Fatal(err)
	}
	generic := &xtsCipher{k1: fast.k1, k2: fast.k2} // without the AES-NI keys
	if haveAESNI && fast.ek == nil {
		t.Fatal("AES-NI present but not used")
	}
	src := bytes.Repeat([]byte{1, 2, 3, 250, 7}, 1000)[:CryptBlockBytes]
	want, got := make([]byte, CryptBlockBytes), make([]byte, CryptBlockBytes)
	for _, c := range []*xtsCipher{fast, generic} {
		for _, unit := range []uint64{0, 1, 5, 255, 1 << 20, 1<<63 + 12345} {
			ref.Encrypt(want, src, unit)
			c.crypt(got, src, unit, false)
			if !bytes.Equal(got, want) {
				t.Fatalf("unit %d (AES-NI %v): ciphertext differs from x/crypto/xts", unit, c.ek != nil)
			}
			c.crypt(got, got, unit, true)
			if !bytes.Equal(got, src) {
				t.Fatalf("unit %d (AES-NI %v): decryption does not give the plaintext back", unit, c.ek != nil)
			}
		}
	}
}

// TestKeyExpansion: FIPS-197 appendix A.3's AES-256 key expansion.
func TestKeyExpansion(t *testing.T) {
	if sbox[0] != 0x63 || sbox[1] != 0x7c || sbox[0x53] != 0xed || sbox[0xff] != 0x16 {
		t.Fatalf("S-box wrong: %x %x %x %x", sbox[0], sbox[1], sbox[0x53], sbox[0xff])
	}
	key, _ := hex.DecodeString("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
	rk := expandKey256(key)
	if got := hex.EncodeToString(rk[224:240]); got != "fe4890d1e6188d0b046df344706c631e" {
		t.Fatalf("last round key %s", got)
	}
}

// BenchmarkXTS4K measures one 4 KiB block's encryption.
func BenchmarkXTS4K(b *testing.B) {
	c, err := newXTS(testKey(1))
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, CryptBlockBytes)
	b.SetBytes(CryptBlockBytes)
	for i := 0; b.Loop(); i++ {
		c.crypt(buf, buf, uint64(i), false)
	}
}

// TestEncryptedMatchesAESXTS: the ciphertext on disk is AES-256-XTS of
// each 4 KiB block with its index as the tweak (aes-xts-plain64 with
// 4096-byte sectors), as OpenSSL computes it (through Python's
// cryptography module).
func TestEncryptedMatchesAESXTS(t *testing.T) {
	if out, err := exec.Command("python3", "-c", "import cryptography").CombinedOutput(); err != nil {
		testenv.Unavailable(t, "python3 with the cryptography module (Debian python3-cryptography): %v %s", err, out)
	}
	ctx := context.Background()
	key := testKey(3)
	e, path := encryptedFile(t, 64<<10, key)
	plain := bytes.Repeat([]byte{0x5a, 0x01, 0xc3}, 4096)[:4096]
	const block = 5
	if err := e.WriteAt(ctx, plain, block*4096, false); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	script := `import sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
key, block, plain = bytes.fromhex(sys.argv[1]), int(sys.argv[2]), bytes.fromhex(sys.argv[3])
enc = Cipher(algorithms.AES(key), modes.XTS(block.to_bytes(16, "little"))).encryptor()
print((enc.update(plain) + enc.finalize()).hex())`
	out, err := exec.Command("python3", "-c", script, hex.EncodeToString(key), "5", hex.EncodeToString(plain)).CombinedOutput()
	if err != nil {
		t.Fatalf("python3: %v\n%s", err, out)
	}
	if got := hex.EncodeToString(raw[block*4096 : (block+1)*4096]); got != strings.TrimSpace(string(out)) {
		t.Fatalf("ciphertext differs from OpenSSL's AES-256-XTS:\n got %.64s…\nwant %.64s…", got, out)
	}
}

// memAsync is an in-memory Async device whose requests run in Run.
type memAsync struct {
	mu      sync.Mutex
	data    []byte
	pending []*Request
}

func (m *memAsync) SizeBytes() uint64           { return uint64(len(m.data)) }
func (m *memAsync) MinBlockBytes() uint32       { return 512 }
func (m *memAsync) PreferredBlockBytes() uint32 { return 4096 }
func (m *memAsync) Flush(context.Context) error { return nil }
func (m *memAsync) ReadAt(_ context.Context, p []byte, off uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(p, m.data[off:])
	return nil
}
func (m *memAsync) WriteAt(_ context.Context, p []byte, off uint64, _ bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(m.data[off:], p)
	return nil
}
func (m *memAsync) Trim(ctx context.Context, off, length uint64, fua bool) error {
	return m.WriteZeroes(ctx, off, length, fua)
}
func (m *memAsync) WriteZeroes(_ context.Context, off, length uint64, _ bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.data[off : off+length])
	return nil
}
func (m *memAsync) Start(r *Request) {
	m.mu.Lock()
	m.pending = append(m.pending, r)
	m.mu.Unlock()
}
func (m *memAsync) Run() {
	m.mu.Lock()
	reqs := m.pending
	m.pending = nil
	m.mu.Unlock()
	for _, r := range reqs {
		r.Done(r, Do(context.Background(), m, r))
	}
}

// TestEncryptedAsyncConcurrent: goroutines writing and reading their own
// blocks through the async path, while others patch partial blocks of
// their own through the synchronous one, all read back what they wrote
// (run it under -race).
func TestEncryptedAsyncConcurrent(t *testing.T) {
	const workers, rounds = 4, 200
	inner := &memAsync{data: make([]byte, 2*workers*CryptBlockBytes)}
	e, err := NewEncrypted(inner, testKey(4))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2*workers)
	for w := range workers {
		wg.Add(2)
		go func() { // async, whole block w
			defer wg.Done()
			for i := range rounds {
				want := bytes.Repeat([]byte{byte(w), byte(i)}, CryptBlockBytes/2)
				for _, op := range []Op{OpWrite, OpRead} {
					data := want
					if op == OpRead {
						data = make([]byte, CryptBlockBytes)
					}
					done := make(chan error, 1)
					e.Start(&Request{Op: op, Offset: uint64(w) * CryptBlockBytes, Data: data, Done: func(_ *Request, err error) { done <- err }})
					e.Run()
					if err := <-done; err != nil {
						errs <- err
						return
					}
					if op == OpRead && !bytes.Equal(data, want) {
						errs <- fmt.Errorf("worker %d round %d: async read back wrong", w, i)
						return
					}
				}
			}
		}()
		go func() { // sync partial writes in block workers+w
			defer wg.Done()
			off := uint64(workers+w)*CryptBlockBytes + 100
			for i := range rounds {
				want := bytes.Repeat([]byte{byte(i)}, 300)
				got := make([]byte, 300)
				if err := e.WriteAt(context.Background(), want, off, false); err != nil {
					errs <- err
					return
				}
				if err := e.ReadAt(context.Background(), got, off); err != nil || !bytes.Equal(got, want) {
					errs <- fmt.Errorf("worker %d round %d: partial read back wrong: %v", w, i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
