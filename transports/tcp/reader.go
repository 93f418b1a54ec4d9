package tcp

import (
	"bufio"
	"io"

	"github.com/drover-io/drover/core/proto"
)

// frameReader reads a connection's frames through its bufio.Reader, except
// that a large read (a rebuild run's data, which proto.ReadFrameSplit reads
// with io.ReadFull into a buffer of its own) goes straight to the
// connection once the buffered bytes are used up: bufio reads directly only
// what is at least its own size, so the last part of every megabyte
// would otherwise be read into the buffer and copied out again (1.7% of a
// 2 GiB rebuild's samples on each receiving side). Order is kept: the
// connection is read only when nothing is buffered.
type frameReader struct {
	br   *bufio.Reader
	conn io.Reader
}

func (r *frameReader) Read(p []byte) (int, error) {
	if len(p) >= proto.SplitDataBytes && r.br.Buffered() == 0 {
		return r.conn.Read(p)
	}
	return r.br.Read(p)
}
