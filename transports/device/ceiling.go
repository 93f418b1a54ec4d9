package device

import "context"

// Ceiling is a Device that tells its clients it is CeilingBytes large
// while serving only the wrapped device's real size: IO past the real
// end fails (reads ErrInvalid, writes ErrNoSpace). A client that reads
// the size once and keeps it (nbdfuse exposes an NBD export as a file of
// the size it saw at connect) can so reach space the volume gains
// later, once whoever bounds its access (a loop device's size limit)
// lets it. It is Async: an Async wrapped device keeps its fast path,
// another serves each request on a goroutine (StartSync).
type Ceiling struct {
	Device
	CeilingBytes uint64
	async        Async
}

// NewCeiling wraps dev; ceilingBytes below dev's size counts as dev's.
func NewCeiling(dev Device, ceilingBytes uint64) *Ceiling {
	a, _ := dev.(Async)
	return &Ceiling{Device: dev, CeilingBytes: ceilingBytes, async: a}
}

// SizeBytes is the ceiling (or the real size, when that is larger).
func (d *Ceiling) SizeBytes() uint64 { return max(d.CeilingBytes, d.Device.SizeBytes()) }

// check refuses a range past the real end.
func (d *Ceiling) check(off, length uint64, write bool) error {
	size := d.Device.SizeBytes()
	if off > size || length > size-off {
		if write {
			return ErrNoSpace
		}
		return ErrInvalid
	}
	return nil
}

func (d *Ceiling) ReadAt(ctx context.Context, p []byte, off uint64) error {
	if err := d.check(off, uint64(len(p)), false); err != nil {
		return err
	}
	return d.Device.ReadAt(ctx, p, off)
}

func (d *Ceiling) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	if err := d.check(off, uint64(len(p)), true); err != nil {
		return err
	}
	return d.Device.WriteAt(ctx, p, off, fua)
}

func (d *Ceiling) Trim(ctx context.Context, off, length uint64, fua bool) error {
	if err := d.check(off, length, true); err != nil {
		return err
	}
	return d.Device.Trim(ctx, off, length, fua)
}

func (d *Ceiling) WriteZeroes(ctx context.Context, off, length uint64, fua bool) error {
	if err := d.check(off, length, true); err != nil {
		return err
	}
	return d.Device.WriteZeroes(ctx, off, length, fua)
}

// Start refuses a request past the real end at once, else starts it on
// the wrapped device.
func (d *Ceiling) Start(r *Request) {
	var err error
	switch r.Op {
	case OpRead:
		err = d.check(r.Offset, uint64(len(r.Data)), false)
	case OpWrite:
		err = d.check(r.Offset, uint64(len(r.Data)), true)
	case OpTrim, OpWriteZeroes:
		err = d.check(r.Offset, r.Length, true)
	}
	if err != nil {
		r.Done(r, err)
		return
	}
	if d.async != nil {
		d.async.Start(r)
		return
	}
	StartSync(context.Background(), d.Device, r)
}

// Run runs the wrapped device's queued work.
func (d *Ceiling) Run() {
	if d.async != nil {
		d.async.Run()
	}
}

// TrimZeroes passes on whether the wrapped device's trims read as zeros.
func (d *Ceiling) TrimZeroes() bool {
	tz, ok := d.Device.(interface{ TrimZeroes() bool })
	return ok && tz.TrimZeroes()
}
