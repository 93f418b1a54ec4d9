package tcp

import (
	"net"

	"github.com/drover-io/drover/core/proto"
)

// frameQueue holds frames waiting to be written: their bytes in one
// buffer, except large data (proto.SplitDataBytes or more), which stays
// in the caller's slice and goes out with writev after the bytes of its
// frame that precede it. A queue with no such data is written with one
// plain write, so small IO allocates nothing.
type frameQueue struct {
	buf []byte
	// splits are the large data slices, each written after buf[:at]
	// (from the previous split's at).
	splits []frameSplit
	vec    net.Buffers // scratch for writeTo
}

type frameSplit struct {
	at   int
	data []byte
}

func (q *frameQueue) empty() bool { return len(q.buf) == 0 && len(q.splits) == 0 }

// bytes is the queue's length on the wire.
func (q *frameQueue) bytes() int {
	n := len(q.buf)
	for _, s := range q.splits {
		n += len(s.data)
	}
	return n
}

// reset empties q, keeping its buffers, and returns it.
func (q frameQueue) reset() frameQueue {
	clear(q.splits) // drop the references to data already written
	q.buf, q.splits = q.buf[:0], q.splits[:0]
	return q
}

func (q *frameQueue) appendRequest(req *proto.Request) {
	var data []byte
	q.buf, data = proto.AppendRequestFrameHead(q.buf, req)
	q.split(data)
}

func (q *frameQueue) appendReply(rep *proto.Reply) {
	var data []byte
	q.buf, data = proto.AppendReplyFrameHead(q.buf, rep)
	q.split(data)
}

func (q *frameQueue) split(data []byte) {
	if data != nil {
		q.splits = append(q.splits, frameSplit{at: len(q.buf), data: data})
	}
}

// writeTo writes the whole queue to c.
func (q *frameQueue) writeTo(c net.Conn) error {
	if len(q.splits) == 0 {
		_, err := c.Write(q.buf)
		return err
	}
	vec := q.vec[:0]
	from := 0
	for _, s := range q.splits {
		if s.at > from {
			vec = append(vec, q.buf[from:s.at])
		}
		vec = append(vec, s.data)
		from = s.at
	}
	if from < len(q.buf) {
		vec = append(vec, q.buf[from:])
	}
	q.vec = vec
	// WriteTo consumes the slice it is called on: write from a copy of
	// the header, so q.vec keeps its backing array for the next write.
	w := vec
	_, err := w.WriteTo(c)
	clear(q.vec[:cap(q.vec)]) // do not keep the data alive
	return err
}
