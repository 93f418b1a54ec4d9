package device

import "context"

// Op is the kind of an asynchronous Request.
type Op uint8

// Request kinds.
const (
	OpRead Op = iota + 1
	OpWrite
	OpTrim
	OpWriteZeroes
	OpFlush
)

func (o Op) String() string {
	switch o {
	case OpRead:
		return "read"
	case OpWrite:
		return "write"
	case OpTrim:
		return "trim"
	case OpWriteZeroes:
		return "write-zeroes"
	case OpFlush:
		return "flush"
	}
	return "op?"
}

// Request is one request to an Async device. The caller owns it (and
// usually embeds or pools it); the device holds it from Start until it
// calls Done.
type Request struct {
	Op     Op
	Offset uint64
	// Length is the byte count of a trim or write-zeroes; reads and
	// writes use len(Data).
	Length uint64
	// Data is where a read lands or what a write writes. The device may
	// read or fill it until Done; the caller must not touch it meanwhile.
	Data []byte
	FUA  bool
	// Owner is the caller's: the device never looks at it, so a Done
	// shared by all requests can find the caller's state without a
	// closure per request.
	Owner any
	// Done is called exactly once with the outcome (nil or an error of
	// the same kinds the synchronous methods return). It may run on any
	// goroutine, inside Start or Run on the caller's own, and must not
	// block: it runs where the device does its work.
	Done func(r *Request, err error)
}

// Async is a Device that can take requests without a goroutine waiting
// for each: a frontend reading many requests from one connection starts
// them all, then calls Run once, and the device does their work on that
// goroutine — so a queue of requests costs no goroutine handoff.
type Async interface {
	Device
	// Start begins r and returns without waiting for it. Its work is done
	// by a later Run (on this goroutine or another) or by the device's own
	// goroutines.
	Start(r *Request)
	// Run does the work waiting in the device, on the calling goroutine,
	// for as long as there is some it can do without blocking; Done
	// callbacks of any request may run inside it. Call it after a batch
	// of Starts, before waiting for anything.
	Run()
}

// StartSync serves r on its own goroutine with dev's synchronous methods:
// the fallback an Async device uses for requests its fast path does not
// take (unaligned, very large, or waiting on a lock).
func StartSync(ctx context.Context, dev Device, r *Request) {
	go func() { r.Done(r, Do(ctx, dev, r)) }()
}

// Do runs r with dev's synchronous methods and returns the outcome.
func Do(ctx context.Context, dev Device, r *Request) error {
	switch r.Op {
	case OpRead:
		return dev.ReadAt(ctx, r.Data, r.Offset)
	case OpWrite:
		return dev.WriteAt(ctx, r.Data, r.Offset, r.FUA)
	case OpTrim:
		return dev.Trim(ctx, r.Offset, r.Length, r.FUA)
	case OpWriteZeroes:
		return dev.WriteZeroes(ctx, r.Offset, r.Length, r.FUA)
	case OpFlush:
		return dev.Flush(ctx)
	}
	return ErrInvalid
}
