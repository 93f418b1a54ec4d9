package device

import (
	"context"
	"errors"
	"sync"
)

// Fill writes every byte of dev once — chunkBytes at a time from writers
// goroutines, each chunk's content made by gen (given the buffer and the
// chunk's offset) — then flushes. Benchmarks and soak tests use it so that
// reads hit written data on every replica, as they do a reference's file.
func Fill(ctx context.Context, dev Device, chunkBytes, writers int, gen func(p []byte, off uint64)) error {
	size := dev.SizeBytes()
	var mu sync.Mutex
	var next uint64
	errc := make(chan error, writers)
	for range writers {
		go func() {
			buf := make([]byte, chunkBytes)
			for {
				mu.Lock()
				off := next
				next += uint64(chunkBytes)
				mu.Unlock()
				if off >= size {
					errc <- nil
					return
				}
				p := buf[:min(uint64(chunkBytes), size-off)]
				gen(p, off)
				if err := dev.WriteAt(ctx, p, off, false); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	var err error
	for range writers {
		err = errors.Join(err, <-errc)
	}
	if err != nil {
		return err
	}
	return dev.Flush(ctx)
}

// Pattern fills p with bytes that depend on their position in the device
// (off is p's offset): cheap, and different in every 1 MiB chunk.
func Pattern(p []byte, off uint64) {
	for i := range p {
		p[i] = byte(i*131) + byte(off>>20)
	}
}

// Noise fills p with pseudo-random bytes seeded by off (splitmix64):
// incompressible content, the same for the same offset every time.
func Noise(p []byte, off uint64) {
	x := off
	for i := 0; i < len(p); i += 8 {
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		z ^= z >> 31
		for j := 0; j < 8 && i+j < len(p); j++ {
			p[i+j] = byte(z >> (8 * j))
		}
	}
}
