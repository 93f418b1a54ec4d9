package backup

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"testing"

	"pgregory.net/rapid"
)

// protocolSim runs backups, deletes and sweeps against an abstract object
// store, one atomic store step at a time in an order draw chooses, with
// the clock advancing, processes stalling (not refreshing their markers)
// and crashing (leaving markers behind). It follows the steps of
// transports/backuprun and takes every decision through this package's
// functions. It returns the first step after which a manifest references
// a chunk that does not exist.
type protocolSim struct {
	draw      func(n int, label string) int
	now       int64
	chunks    map[int]bool
	manifests map[string][]int
	markers   map[string]int64
	procs     []*proc
	nextID    int
	broken    string // canary: "no-sweep-check", "no-recheck", "no-fresh-delete"
	log       []string
}

const staleAfter = 100

type proc struct {
	kind        string // backup, sweep
	id          string
	pc          int
	refs        []int
	seen        map[int]bool // backup: chunks listed; sweep: candidates
	todo        []int
	refreshed   int64 // last refresh of its marker
	maxGap      int64
	crashed     bool
	done        bool
	candidates  []int
	deleteIndex int
}

func (s *protocolSim) listMarkers() []Marker {
	var out []Marker
	for name, at := range s.markers {
		var m Marker
		if n, err := fmt.Sscanf(name, "backup-%s", &m.ID); err == nil && n == 1 {
			m.Kind = MarkerBackup
		} else {
			m.Kind = MarkerSweep
			m.ID = name[len("sweep-"):]
		}
		m.RefreshedUnix = at
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out
}

func (s *protocolSim) manifestList() []*Manifest {
	var out []*Manifest
	for _, refs := range s.manifests {
		m := &Manifest{}
		for _, h := range refs {
			m.Chunks = append(m.Chunks, Chunk{Hash: hashOfInt(h)})
		}
		out = append(out, m)
	}
	return out
}

func hashOfInt(h int) Hash { return HashOf([]byte{byte(h)}) }

func (s *protocolSim) start() {
	s.nextID++
	id := fmt.Sprint(s.nextID)
	if s.draw(3, "kind") > 0 {
		p := &proc{kind: MarkerBackup, id: id, refreshed: s.now}
		for h := range 8 {
			if s.draw(2, "ref") == 0 {
				p.refs = append(p.refs, h)
			}
		}
		s.procs = append(s.procs, p)
		return
	}
	s.procs = append(s.procs, &proc{kind: MarkerSweep, id: id, refreshed: s.now})
}

func (p *proc) marker() string { return p.kind + "-" + p.id }

func (s *protocolSim) end(p *proc) {
	delete(s.markers, p.marker())
	p.done = true
}

// stepBackup runs one store step of backup p.
func (s *protocolSim) stepBackup(p *proc) {
	switch p.pc {
	case 0:
		s.markers[p.marker()] = s.now
		p.refreshed = s.now
	case 1:
		if BackupMayProceed(s.listMarkers(), s.now, staleAfter) != nil {
			s.end(p)
			return
		}
	case 2:
		p.seen = map[int]bool{}
		for h := range s.chunks {
			p.seen[h] = true
		}
		p.todo = append([]int(nil), p.refs...)
	case 3:
		if len(p.todo) > 0 {
			h := p.todo[0]
			p.todo = p.todo[1:]
			if !p.seen[h] {
				s.chunks[h] = true
			}
			return // stay at pc 3
		}
	case 4:
		p.maxGap = max(p.maxGap, s.now-p.refreshed)
		if !MustRecheck(p.maxGap, staleAfter) || s.broken == "no-recheck" {
			p.pc = 6
			s.stepBackup(p)
			return
		}
		s.markers[p.marker()] = s.now
		p.refreshed, p.maxGap = s.now, 0
	case 5:
		if BackupMayProceed(s.listMarkers(), s.now, staleAfter) != nil {
			s.end(p)
			return
		}
		for _, h := range p.refs { // one step: HEAD and re-upload
			s.chunks[h] = true
		}
	case 6:
		p.maxGap = max(p.maxGap, s.now-p.refreshed)
		if MustRecheck(p.maxGap, staleAfter) && s.broken != "no-recheck" {
			p.pc = 4 // stalled since the check: check again
			s.stepBackup(p)
			return
		}
		s.manifests["m"+p.id] = p.refs
	case 7:
		s.end(p)
		return
	}
	p.pc++
}

func (s *protocolSim) stepSweep(p *proc) {
	switch p.pc {
	case 0:
		s.markers[p.marker()] = s.now
		p.refreshed = s.now
	case 1:
		if SweepMayProceed(s.listMarkers(), s.now, staleAfter) != nil && s.broken != "no-sweep-check" {
			s.end(p)
			return
		}
	case 2:
		// Manifests are listed before chunks: a chunk uploaded after this
		// listing by a backup that started after the check is not a
		// candidate... unless listed below; the marker check covers it.
		ms := s.manifestList()
		var all []Hash
		for h := range 8 {
			if s.chunks[h] {
				all = append(all, hashOfInt(h))
			}
		}
		for _, h := range Unreferenced(all, ms) {
			for i := range 8 {
				if hashOfInt(i) == h {
					p.candidates = append(p.candidates, i)
				}
			}
		}
	case 3:
		if p.deleteIndex < len(p.candidates) {
			p.maxGap = max(p.maxGap, s.now-p.refreshed)
			if !SweepMayDelete(p.maxGap, staleAfter) && s.broken != "no-fresh-delete" {
				s.end(p)
				return
			}
			delete(s.chunks, p.candidates[p.deleteIndex])
			p.deleteIndex++
			return
		}
	case 4:
		s.end(p)
		return
	}
	p.pc++
}

func (s *protocolSim) check() error {
	for id, refs := range s.manifests {
		for _, h := range refs {
			if !s.chunks[h] {
				return fmt.Errorf("manifest %s references chunk %d, which is gone (after: %v)", id, h, s.log)
			}
		}
	}
	return nil
}

func (s *protocolSim) run(steps int) error {
	s.chunks, s.manifests, s.markers = map[int]bool{}, map[string][]int{}, map[string]int64{}
	for range steps {
		var live []*proc
		for _, p := range s.procs {
			if !p.done && !p.crashed {
				live = append(live, p)
			}
		}
		switch a := s.draw(10, "action"); {
		case a == 0 || len(live) == 0:
			s.start()
			s.log = append(s.log, "start")
			continue
		case a == 1:
			s.now += int64(s.draw(staleAfter, "advance"))
			s.log = append(s.log, fmt.Sprintf("t=%d", s.now))
			continue
		case a == 2 && len(s.manifests) > 0:
			ids := make([]string, 0, len(s.manifests))
			for id := range s.manifests {
				ids = append(ids, id)
			}
			sort.Strings(ids)
			id := ids[s.draw(len(ids), "delete")]
			delete(s.manifests, id)
			s.log = append(s.log, "rm "+id)
			continue
		case a == 3:
			p := live[s.draw(len(live), "refresh")]
			s.markers[p.marker()] = s.now
			p.maxGap = max(p.maxGap, s.now-p.refreshed)
			p.refreshed = s.now
			s.log = append(s.log, "refresh "+p.marker())
			continue
		case a == 4 && s.draw(4, "crash") == 0:
			p := live[s.draw(len(live), "victim")]
			p.crashed = true
			s.log = append(s.log, "crash "+p.marker())
			continue
		}
		p := live[s.draw(len(live), "proc")]
		s.log = append(s.log, fmt.Sprintf("%s@%d", p.marker(), p.pc))
		if p.kind == MarkerBackup {
			s.stepBackup(p)
		} else {
			s.stepSweep(p)
		}
		if err := s.check(); err != nil {
			return err
		}
	}
	return nil
}

// TestProtocolKeepsReferencedChunks: no interleaving of backups, deletes,
// sweeps, clock jumps, stalls and crashes leaves a manifest referencing a
// missing chunk.
func TestProtocolKeepsReferencedChunks(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		s := &protocolSim{draw: func(n int, label string) int { return rapid.IntRange(0, n-1).Draw(t, label) }}
		if err := s.run(rapid.IntRange(10, 300).Draw(t, "steps")); err != nil {
			t.Fatal(err)
		}
	})
}

// TestProtocolCanaries: each weakened protocol is caught, so the test
// above can fail.
func TestProtocolCanaries(t *testing.T) {
	for _, broken := range []string{"no-sweep-check", "no-recheck", "no-fresh-delete"} {
		caught := 0
		for seed := range uint64(1000) {
			rng := rand.New(rand.NewPCG(seed, 7))
			s := &protocolSim{broken: broken, draw: func(n int, _ string) int { return rng.IntN(n) }}
			if s.run(300) != nil {
				caught++
			}
		}
		t.Logf("%s: caught in %d of 1000 runs", broken, caught)
		if caught == 0 {
			t.Errorf("%s: never caught", broken)
		}
	}
}
