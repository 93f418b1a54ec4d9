// Package sim is Drover's deterministic discrete-event simulator. It runs
// the real core (core/engine, core/replica) on simulated disks
// (core/memstore plus latency and faults) and a simulated network, under a
// virtual clock, with one seeded PRNG from which every choice derives: the
// same seed gives the same event trace, byte for byte (TraceHash).
//
// A run has two phases, as in TigerBeetle's VOPR: safety under faults,
// then liveness: every fault heals, and the volume must serve every
// request within a bound and converge (all replicas RW and identical).
// Checkers: per-block linearizability (porcupine), durability of flushed
// writes across crashes, convergence, liveness, and integrity of every
// block a client reads.
package sim

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"runtime/debug"
	"sort"
	"strings"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/replica"
)

// Bugs plants deliberate faults in the core, to prove the checkers work.
type Bugs struct {
	Engine  engine.Bugs
	Replica replica.Bugs
}

// Options choose what one run does.
type Options struct {
	Seed    uint64
	Profile string // fault profile name (see Profiles)
	Ops     int    // client operations to run (default 2000)
	Bugs    Bugs
	// TraceDir, when set, receives the porcupine visualization of a
	// failed linearizability check.
	TraceDir string
	// Log, when set, receives every trace record as text (slow).
	Log func(string)
}

// Result is the outcome of one run.
type Result struct {
	Seed       uint64
	Profile    string
	Knobs      Knobs
	Failures   []string // empty: every checker passed
	TraceHash  uint64
	Events     uint64
	BlockOps   uint64 // per-block client operations completed
	ClientOps  uint64
	VirtualUs  int64
	Eras       int
	Stats      map[string]int
	VisualPath string
}

// OK reports whether every checker passed.
func (r *Result) OK() bool { return len(r.Failures) == 0 }

type event struct {
	at  int64
	seq uint64
	fn  func()
}

// eventQueue is a binary min-heap of events by (at, seq): typed, so
// pushing and popping cost no interface calls (the simulator's hottest
// loop).
type eventQueue []*event

func (q eventQueue) Len() int { return len(q) }

func (q eventQueue) less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].seq < q[j].seq
}

func (q *eventQueue) push(e *event) {
	*q = append(*q, e)
	h := *q
	for i := len(h) - 1; i > 0; {
		p := (i - 1) / 2
		if !h.less(i, p) {
			break
		}
		h[i], h[p] = h[p], h[i]
		i = p
	}
}

func (q *eventQueue) pop() *event {
	h := *q
	top := h[0]
	n := len(h) - 1
	h[0] = h[n]
	h[n] = nil
	h = h[:n]
	for i := 0; ; {
		l, r, m := 2*i+1, 2*i+2, i
		if l < n && h.less(l, m) {
			m = l
		}
		if r < n && h.less(r, m) {
			m = r
		}
		if m == i {
			break
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
	*q = h
	return top
}

// Sim is one simulated cluster.
type Sim struct {
	opt   Options
	knobs Knobs
	rng   *rand.Rand
	now   int64 // virtual microseconds
	seq   uint64
	queue eventQueue
	trace uint64 // running FNV-1a hash of the trace
	steps uint64

	replicas []*replicaNode
	engines  []*engineNode // every engine incarnation; the last is current
	clients  []*client
	hist     *history

	rotted map[uint64]bool // blocks bit rot struck (once each)
	rots   []rotRecord     // what rot and lost writes damaged, and the good bytes
	// managerRemoved counts lost members the manager took out of the
	// volume by request because no spare was left to replace them.
	managerRemoved int
	removing       bool
	reverting      *revertTask // clients wait while set
	revertTask     *revertTask // the revert in progress, paused or not
	idling         *idleWindow // clients wait while set
	healed         bool
	healAt         int64
	stopped        bool
	failures       []string
	stats          map[string]int
	// recycle (odd seeds) plays a production driver: Ready slices are
	// released back to the engine and replicas, and consumed frontend
	// buffers are overwritten (engineNode.recycle). No PRNG draw: a seed
	// replays the same either way unless the core misuses a buffer.
	recycle bool
}

// Run executes one seed and checks it.
func Run(opt Options) *Result {
	if opt.Ops <= 0 {
		opt.Ops = 2000
	}
	if opt.Profile == "" {
		opt.Profile = "swarm"
	}
	s, err := newSim(opt)
	if err != nil {
		return &Result{Seed: opt.Seed, Profile: opt.Profile, Failures: []string{err.Error()}}
	}
	if r := s.loopChecked(); r != nil {
		return r
	}
	s.check()
	return s.result()
}

// loopChecked runs the loop and turns a panic of the core (a broken
// invariant, see core/engine's assert) into this seed's failure, so that
// a campaign names the seed and goes on.
func (s *Sim) loopChecked() (failed *Result) {
	defer func() {
		if p := recover(); p != nil {
			s.fail("panic at %d us: %v\n%s", s.now, p, panicFrames(debug.Stack()))
			failed = s.result()
		}
	}()
	s.loop()
	return nil
}

// panicFrames keeps the function lines of a goroutine stack from the
// panicking frame down to the simulator's loop: enough to find the bug
// from a CI log without rerunning the seed.
func panicFrames(stack []byte) string {
	var out []string
	lines := strings.Split(string(stack), "\n")
	seenPanic := false
	for i := 0; i+1 < len(lines); i++ {
		fn := lines[i]
		if strings.HasPrefix(fn, "panic(") || strings.HasPrefix(fn, "runtime.panic") {
			seenPanic = true
			continue
		}
		if !seenPanic || strings.HasPrefix(fn, "\t") || strings.HasPrefix(fn, "goroutine ") {
			continue
		}
		out = append(out, "    "+fn+" "+strings.TrimSpace(lines[i+1]))
		if strings.Contains(fn, "(*Sim).loop(") || len(out) == 12 {
			break
		}
	}
	return strings.Join(out, "\n")
}

// newSim sets up the run of opt's seed, ready to loop. (Debugging tests
// build their runs here too, so that they replay exactly what Run does.)
func newSim(opt Options) (*Sim, error) {
	rng := newRNG(opt.Seed)
	knobs, err := ProfileKnobs(opt.Profile, rng)
	if err != nil {
		return nil, err
	}
	if opt.Profile == "swarm" {
		swarmReplace(&knobs, opt.Seed)
		swarmIdle(&knobs, opt.Seed)
		swarmCopyShape(&knobs, opt.Seed)
		swarmDisk(&knobs, opt.Seed)
	}
	s := &Sim{opt: opt, knobs: knobs, rng: rng, trace: 14695981039346656037, stats: map[string]int{}, rotted: map[uint64]bool{},
		recycle: opt.Seed%2 == 1}
	s.hist = newHistory(s)
	s.setup()
	return s, nil
}

func (s *Sim) result() *Result {
	r := &Result{Seed: s.opt.Seed, Profile: s.opt.Profile, Knobs: s.knobs, Failures: s.failures,
		TraceHash: s.trace, Events: s.steps, VirtualUs: s.now, Eras: len(s.hist.eras), Stats: s.stats}
	r.BlockOps, r.ClientOps = s.hist.blockOps, s.hist.clientOps
	r.VisualPath = s.hist.visualPath
	return r
}

// at schedules fn at virtual time t (never in the past).
func (s *Sim) at(t int64, fn func()) {
	if t < s.now {
		t = s.now
	}
	s.seq++
	s.queue.push(&event{at: t, seq: s.seq, fn: fn})
}

func (s *Sim) after(d int64, fn func()) { s.at(s.now+d, fn) }

// note mixes one trace record into the trace hash.
func (s *Sim) note(kind string, vals ...uint64) {
	if s.opt.Log != nil {
		s.opt.Log(fmt.Sprintf("%8d %s %v", s.now, kind, vals))
	}
	h := fnv.New64a()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], s.trace)
	h.Write(b[:])
	binary.LittleEndian.PutUint64(b[:], uint64(s.now))
	h.Write(b[:])
	h.Write([]byte(kind))
	for _, v := range vals {
		binary.LittleEndian.PutUint64(b[:], v)
		h.Write(b[:])
	}
	s.trace = h.Sum64()
}

func (s *Sim) fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	for _, f := range s.failures {
		if f == msg {
			return
		}
	}
	if len(s.failures) < 20 {
		s.failures = append(s.failures, msg)
	}
}

func (s *Sim) count(what string) { s.stats[what]++ }

// uniform returns a duration in [lo, hi].
func (s *Sim) uniform(lo, hi int64) int64 {
	if hi <= lo {
		return lo
	}
	return lo + s.rng.Int64N(hi-lo+1)
}

// chance reports true with probability perMillion / 1e6.
func (s *Sim) chance(perMillion int) bool {
	return perMillion > 0 && s.rng.IntN(1_000_000) < perMillion
}

func (s *Sim) loop() {
	const maxEvents = 2_000_000
	for s.queue.Len() > 0 && !s.stopped {
		e := s.queue.pop()
		s.now = e.at
		s.steps++
		e.fn()
		if s.steps > maxEvents {
			s.fail("run did not finish within %d events", maxEvents)
			return
		}
	}
}

func newRNG(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, seed^0x5deece66d)) }

// Describe is a one-line summary of a result.
func (r *Result) Describe() string {
	verdict := "PASS"
	if !r.OK() {
		verdict = "FAIL"
	}
	keys := make([]string, 0, len(r.Stats))
	for k := range r.Stats {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var st []string
	for _, k := range keys {
		st = append(st, fmt.Sprintf("%s=%d", k, r.Stats[k]))
	}
	return fmt.Sprintf("seed %d profile %s: %s trace %016x events %d block-ops %d virtual %.1fs eras %d [%s]",
		r.Seed, r.Profile, verdict, r.TraceHash, r.Events, r.BlockOps, float64(r.VirtualUs)/1e6, r.Eras, strings.Join(st, " "))
}
