package tcp

import (
	"bufio"
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"testing"

	"github.com/drover-io/drover/core/proto"
)

// TestFrameReaderKeepsOrder: reads of every size through a frameReader,
// small ones through the buffer and large ones straight from the
// connection, return the stream's bytes in order, however the writer
// chunks them.
func TestFrameReaderKeepsOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	stream := make([]byte, 8<<20)
	for i := range stream {
		stream[i] = byte(rng.Uint32())
	}
	client, server := net.Pipe()
	go func() {
		defer client.Close()
		for rest := stream; len(rest) > 0; {
			n := min(len(rest), 1+rng.IntN(300<<10))
			if _, err := client.Write(rest[:n]); err != nil {
				return
			}
			rest = rest[n:]
		}
	}()
	fr := &frameReader{br: bufio.NewReaderSize(server, readBufferBytes), conn: server}
	var got []byte
	sizes := []int{13, 4096, proto.SplitDataBytes, 100 << 10, readBufferBytes, 1 << 20}
	for i := 0; len(got) < len(stream); i++ {
		p := make([]byte, min(sizes[i%len(sizes)], len(stream)-len(got)))
		if _, err := io.ReadFull(fr, p); err != nil {
			t.Fatalf("read %d bytes at %d: %v", len(p), len(got), err)
		}
		got = append(got, p...)
	}
	if !bytes.Equal(got, stream) {
		t.Fatal("bytes read through frameReader differ from the stream written")
	}
}
