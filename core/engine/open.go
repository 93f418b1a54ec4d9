package engine

import (
	"bytes"
	"fmt"
	"sort"
	"strings"

	"github.com/drover-io/drover/core/proto"
)

// openTask is one attempt to open the volume: learn every replica's
// epoch, fence them at a higher one, pick the current set from the newest
// membership, resync regions a crash left unsettled, record the new
// membership, serve.
type openTask struct {
	// stage is where the open is, for Tasks: ask (OpInfo to every
	// member), fence (OpOpen at the new epoch), corroborate, repair,
	// resync, repair-others, settle, record.
	stage  string
	infos  map[proto.ReplicaID]*proto.Info
	left   int
	fenced map[proto.ReplicaID]*proto.Info
	// badBacking: replicas on another image than Config.BackingSHA256,
	// and why (never current).
	badBacking map[proto.ReplicaID]string
	// stale: RW members that could not prove they hold the newest data,
	// and why (rebuilt, never a source).
	stale map[proto.ReplicaID]string
	// best is the membership the open adopted.
	best *proto.Membership
}

func (t *openTask) noteStale(id proto.ReplicaID, why string) {
	if t.stale == nil {
		t.stale = map[proto.ReplicaID]string{}
	}
	t.stale[id] = why
}

func (e *Engine) startOpen() {
	t := &openTask{stage: "ask", infos: map[proto.ReplicaID]*proto.Info{}, fenced: map[proto.ReplicaID]*proto.Info{}}
	e.opening = t
	e.phase = PhaseOpening
	// The members, not just the configured replicas: a reopen after a
	// fault must include replicas added since.
	ids := make([]proto.ReplicaID, 0, len(e.members))
	for _, m := range e.sortedMembers() {
		ids = append(ids, m.id)
	}
	t.left = len(ids)
	for _, id := range ids {
		e.send(id, proto.Request{Op: proto.OpInfo}, func(rep proto.Reply) {
			t.left--
			if rep.Status == proto.StatusOK && rep.Info != nil {
				t.infos[id] = rep.Info
			}
			if t.left == 0 {
				e.fenceAll(t)
			}
		})
	}
}

func (e *Engine) retryOpen(why string) {
	e.opening = nil
	e.why = why
	e.retryAt = e.now + e.cfg.RetryTicks
}

func (e *Engine) fenceAll(t *openTask) {
	if e.opening != t {
		return
	}
	if len(t.infos) == 0 {
		e.retryOpen("no replica answered")
		return
	}
	epoch := max(e.cfg.MinEpoch, e.epoch)
	for _, info := range t.infos {
		epoch = max(epoch, info.Epoch)
	}
	next := NextEpoch(epoch, e.cfg.Nonce)
	if next <= e.epoch {
		invariant("epoch would go from %d back to %d", e.epoch, next)
	}
	e.epoch = next
	t.stage = "fence"
	t.left = len(t.infos)
	for _, id := range sortedIDs(t.infos) {
		e.send(id, proto.Request{Op: proto.OpOpen}, func(rep proto.Reply) {
			t.left--
			if rep.Status == proto.StatusOK && rep.Info != nil {
				t.fenced[id] = rep.Info
			}
			if t.left == 0 {
				e.decide(t)
			}
		})
	}
}

func sortedIDs[V any](m map[proto.ReplicaID]V) []proto.ReplicaID {
	ids := make([]proto.ReplicaID, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

// decide picks the current replicas from what the fenced ones recorded.
func (e *Engine) decide(t *openTask) {
	if e.opening != t {
		return
	}
	var best *proto.Membership
	for _, id := range sortedIDs(t.fenced) {
		// Newest by (generation, epoch): two engines may each have recorded
		// a generation g; the later engine's, which fenced the earlier, is
		// the real one (sim seed 8, crash profile).
		if m := t.fenced[id].Membership; m != nil && (best == nil || m.Gen > best.Gen || m.Gen == best.Gen && m.Epoch > best.Epoch) {
			best = m
		}
	}
	// A replica with no membership record while another has one lost
	// its disk (or was never set up): it cannot vote, since it forgot
	// every membership it recorded, and a quorum counted with it might
	// miss the newest.
	// Unless it is the very store the record names (recordedStore):
	// then it was never given one (the record reached only some).
	acks := map[proto.ReplicaID]bool{}
	for id, info := range t.fenced {
		if best == nil || info.Membership != nil || recordedStore(best, info) || e.cfg.Bugs.TrustEmptyReplicas {
			acks[id] = true
		}
	}
	// Writes sent from now on must carry sequences above any a replica
	// recorded, so that the durable sequences keep ordering replicas
	// across engines.
	for _, info := range t.infos {
		e.writeSeq = max(e.writeSeq, info.FlushedSeq, info.FUASeq)
	}
	for _, info := range t.fenced {
		e.writeSeq = max(e.writeSeq, info.FlushedSeq, info.FUASeq)
	}
	joined, isNew := false, best == nil
	if best == nil {
		// A new volume: every configured replica starts as RW, and every
		// one must be here. With none holding a membership, a replica
		// missing may be the only one that does (the others wiped):
		// opening without it would serve an empty volume.
		best = &proto.Membership{}
		for _, id := range e.cfg.Replicas {
			best.Members = append(best.Members, proto.Member{ID: id, Mode: proto.ModeRW})
		}
		if missing := e.missingConfigured(t); missing != "" && !e.cfg.Bugs.NoQuorumOpen {
			e.retryOpen(fmt.Sprintf("no replica holds a membership record and %s did not answer: waiting for every replica of a new volume (one that is down may hold the data)", missing))
			return
		}
	} else {
		joined = e.adoptMembers(best)
	}
	// best may have been recorded by an engine that never got it onto a
	// quorum of its predecessor; then an engine that found only the
	// predecessor could open too. So fence a quorum of both, and record
	// the next membership on a quorum of both (committedPrev).
	var prev *proto.Membership
	if len(best.Prev) > 0 {
		prev = &proto.Membership{Gen: best.Gen - 1, Members: best.Prev}
	}
	quorum := IsQuorum(best, acks) && (prev == nil || IsQuorum(prev, acks))
	if !quorum && !(e.cfg.Bugs.NoQuorumOpen && len(acks) > 0) {
		e.retryOpen(fmt.Sprintf("fenced %d replicas, not a quorum of membership gen %d and its predecessor", len(acks), best.Gen))
		if joined {
			e.retryAt = e.now // ask the members just learned of at once
		}
		return
	}
	t.best = best
	current := e.pickCurrent(t, best)
	if len(current) == 0 {
		why := "no current replica"
		for _, id := range sortedIDs(t.badBacking) {
			why += ": " + t.badBacking[id]
			break
		}
		for _, id := range sortedIDs(t.stale) {
			why += fmt.Sprintf("; replica %s %s", id, t.stale[id])
		}
		e.retryOpen(why)
		return
	}
	if why := e.checkBackingChain(t.fenced[current[0]].Chain, isNew); why != "" {
		e.retryOpen(why)
		return
	}
	e.backingSHA256 = e.cfg.BackingSHA256
	if e.backingSHA256 == "" {
		e.backingSHA256 = t.fenced[current[0]].BackingSHA256
	}
	e.committed, e.committedPrev = best, prev
	// A stale engine may hold a read lease granted before our fence:
	// serve nothing until it has run out.
	e.quietUntil = e.now + e.cfg.LeaseTicks + 1
	for _, m := range e.members {
		m.lastOK, m.silent = 0, false
	}
	for _, m := range e.sortedMembers() {
		m.mode, m.info = ModeWO, t.fenced[m.id]
		if m.info != nil {
			m.created = m.info.Created
		}
		if m.info == nil {
			m.mode, m.why, m.errSince = ModeERR, "did not answer at open", e.now
		}
		m.setDown(e.now)
	}
	for id, why := range t.badBacking {
		if m := e.members[id]; m != nil {
			m.mode, m.why, m.errSince = ModeERR, why, e.now
		}
	}
	for _, id := range sortedIDs(t.stale) {
		if m := e.members[id]; m != nil && m.mode == ModeWO {
			m.why = "rebuilt at open: it " + t.stale[id]
			e.event(Event{Kind: EventStaleAtOpen, Replica: id, Why: t.stale[id]})
		}
	}
	for _, id := range current {
		e.members[id].setRW()
	}
	src := t.fenced[current[0]]
	e.sizeBytes, e.chain = src.SizeBytes, append([]string(nil), src.Chain...)
	e.resync(t, current)
}

// missingConfigured names a configured replica that was not fenced ("" when
// every one was).
func (e *Engine) missingConfigured(t *openTask) string {
	for _, id := range e.cfg.Replicas {
		if t.fenced[id] == nil {
			return fmt.Sprintf("replica %s", id)
		}
	}
	return ""
}

// durableMark orders replicas by the writes they hold durably: first the
// flushed sequence (every write up to it), then the highest FUA write
// above it. A replica below another's mark may lack a write that was
// acknowledged as durable; one restored from an old copy, or whose disk
// came back empty, is below the replicas that went on.
type durableMark struct{ flushed, fua uint64 }

func markOf(info *proto.Info) durableMark {
	return durableMark{info.FlushedSeq, max(info.FUASeq, info.FlushedSeq)}
}

func (a durableMark) less(b durableMark) bool {
	return a.flushed < b.flushed || a.flushed == b.flushed && a.fua < b.fua
}

// pickCurrent returns the RW members of best that were fenced, can prove
// they hold the newest data, and agree on the chain most of them hold (an
// interrupted snapshot operation can leave them apart; the others are
// rebuilt), and on their backing image.
//
// Proof of the newest data: a membership record (one without lost its
// disk) and the highest durable mark among those members. Every
// acknowledged flush or FUA write reached every RW member, so a member
// below the highest mark either missed only unacknowledged ones or lost
// acknowledged data (a stale copy, a wiped disk); it is rebuilt either
// way, never trusted.
func (e *Engine) pickCurrent(t *openTask, best *proto.Membership) []proto.ReplicaID {
	var top durableMark
	for _, id := range sortedIDs(t.fenced) {
		info := t.fenced[id]
		if best.Mode(id) == proto.ModeRW && (info.Membership != nil || best.Gen == 0 || e.cfg.Bugs.TrustEmptyReplicas) && !selfNotRW(id, info) && top.less(markOf(info)) {
			top = markOf(info)
		}
	}
	votes := map[string][]proto.ReplicaID{}
	for _, id := range sortedIDs(t.fenced) {
		if best.Mode(id) != proto.ModeRW {
			continue
		}
		info := t.fenced[id]
		if !e.cfg.Bugs.TrustEmptyReplicas && info.Membership == nil && best.Gen != 0 {
			t.noteStale(id, "holds no membership record (its disk was wiped or replaced?)")
			continue
		}
		if selfNotRW(id, info) && !e.cfg.Bugs.IgnoreDurableMark {
			t.noteStale(id, fmt.Sprintf("records itself %v in its own membership (gen %d): a rebuild target whose copy may be incomplete (restored from an old copy, or it missed its promotion)", info.Membership.Mode(id), info.Membership.Gen))
			continue
		}
		if m := markOf(info); m.less(top) && !e.cfg.Bugs.IgnoreDurableMark {
			t.noteStale(id, fmt.Sprintf("holds durable writes up to seq %d/%d, others up to %d/%d (restored from an old copy, or missed the last flush)", m.flushed, m.fua, top.flushed, top.fua))
			continue
		}
		if why := e.backingMismatch(id, info, e.cfg.BackingSHA256); why != "" {
			if t.badBacking == nil {
				t.badBacking = map[proto.ReplicaID]string{}
			}
			t.badBacking[id] = why
			continue
		}
		// Replicas on different images of one name never count as one.
		key := fmt.Sprintf("%d|%s|%s", info.SizeBytes, info.BackingSHA256, strings.Join(info.Chain, "\x00"))
		votes[key] = append(votes[key], id)
	}
	var pick []proto.ReplicaID
	keys := make([]string, 0, len(votes))
	for k := range votes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if len(votes[k]) > len(pick) {
			pick = votes[k]
		}
	}
	return pick
}

// selfNotRW reports whether a replica's own membership record has it
// other than RW. A rebuild target's durable marks follow the frontend's
// writes and flushes while its copy of the older data is still under
// way, so the marks alone cannot tell a complete copy from one restored
// from a disk image taken mid-rebuild; only the promotion, recorded on
// the replica itself, says its copy completed. One that missed its
// promotion is rebuilt once more, which costs time, not data.
func selfNotRW(id proto.ReplicaID, info *proto.Info) bool {
	return info.Membership != nil && info.Membership.Mode(id) != proto.ModeRW
}

// resync makes the current replicas agree on the head extents that a
// crash left unsettled on any of them: the first current replica's
// content is copied over the others where their checksums differ.
func (e *Engine) resync(t *openTask, current []proto.ReplicaID) {
	var extents []proto.Extent
	var dirty []proto.ReplicaID
	for _, id := range current {
		info := t.fenced[id]
		if info.Dirty {
			dirty = append(dirty, id)
		}
		extents = append(extents, info.Recovered...)
	}
	for _, id := range current {
		// Active regions may hold writes a previous engine sent to some
		// replicas and not others (it died or was fenced mid-write):
		// without a crash nothing settles them, and the replicas would
		// answer reads differently. Info does not say which regions, so
		// compare the whole head; only differing blocks are copied.
		if t.fenced[id].ActiveRegions > 0 {
			extents = append(extents, proto.Extent{BlockIndex: 0, BlockCount: e.sizeBytes / proto.BlockSize})
			break
		}
	}
	if e.cfg.Bugs.SkipResyncOnReopen {
		extents = nil
	}
	e.phase = PhaseOpening
	sync := &layerSync{e: e, layer: "", source: current[0], targets: current[1:], extents: splitExtents(extents, e.sizeBytes/proto.BlockSize, e.cfg.CopyShape.WindowBlocks)}
	run := sync.run
	if !e.cfg.Bugs.SkipResyncOnReopen {
		run = func(done func(string)) {
			donors, unsure := suspectDonors(t, current)
			t.stage = "corroborate"
			e.corroborate(t, current, unsure, donors, func(donors []donor) {
				t.stage = "repair"
				e.repairSuspects(t, current, donors, func(err string) {
					if err != "" {
						done(err)
						return
					}
					t.stage = "resync"
					sync.run(func(err string) {
						if err != "" {
							done(err)
							return
						}
						t.stage = "repair-others"
						e.repairOthers(t, current, othersSuspects(t, current), done)
					})
				})
			})
		}
	}
	run(func(err string) {
		if e.opening != t {
			return
		}
		if err != "" {
			e.retryOpen("resync: " + err)
			return
		}
		e.settle(t, dirty)
	})
}

func (e *Engine) settle(t *openTask, dirty []proto.ReplicaID) {
	t.stage = "settle"
	left := len(dirty)
	done := func() {
		e.opening = nil
		e.phase = PhaseServing
		e.why = ""
		e.proposeMembership(func(ok bool) {})
		e.schedule()
	}
	if left == 0 {
		done()
		return
	}
	for _, id := range dirty {
		e.send(id, proto.Request{Op: proto.OpSettle}, func(rep proto.Reply) {
			if e.opening != t {
				return
			}
			left--
			if rep.Status != proto.StatusOK {
				e.members[id].mode = ModeWO // rebuilt instead
			}
			if left == 0 {
				done()
			}
		})
	}
}

// splitExtents clips extents to the volume and cuts them into pieces of
// at most windowBlocks blocks, sorted and merged.
func splitExtents(in []proto.Extent, sizeBlocks, windowBlocks uint64) []proto.Extent {
	sort.Slice(in, func(i, j int) bool { return in[i].BlockIndex < in[j].BlockIndex })
	var merged []proto.Extent
	for _, x := range in {
		if x.BlockIndex >= sizeBlocks {
			continue
		}
		x.BlockCount = min(x.BlockCount, sizeBlocks-x.BlockIndex)
		if n := len(merged); n > 0 && merged[n-1].BlockIndex+merged[n-1].BlockCount >= x.BlockIndex {
			end := max(merged[n-1].BlockIndex+merged[n-1].BlockCount, x.BlockIndex+x.BlockCount)
			merged[n-1].BlockCount = end - merged[n-1].BlockIndex
			continue
		}
		merged = append(merged, x)
	}
	var out []proto.Extent
	for _, x := range merged {
		for x.BlockCount > 0 {
			n := min(x.BlockCount, windowBlocks)
			out = append(out, proto.Extent{BlockIndex: x.BlockIndex, BlockCount: n})
			x.BlockIndex += n
			x.BlockCount -= n
		}
	}
	return out
}

// donor names a replica holding a trusted copy of a block the resync
// source had to settle after a crash.
type donor struct {
	block uint64
	from  proto.ReplicaID
}

// suspectDonors finds, for every block the source (current[0]) settled by
// recomputing its checksum, a current replica that did not have to: its
// copy is whole and verified, while the source's may be bit rot the settle
// could not tell from an unsynced overwrite. Blocks every current replica
// settled are returned as unsure, for corroborate.
func suspectDonors(t *openTask, current []proto.ReplicaID) (donors []donor, unsure []uint64) {
	src := t.fenced[current[0]]
	for _, x := range src.Suspect {
		for b := x.BlockIndex; b < x.BlockIndex+x.BlockCount; b++ {
			found := false
			for _, id := range current[1:] {
				if !inExtents(t.fenced[id].Suspect, b) {
					donors = append(donors, donor{block: b, from: id})
					found = true
					break
				}
			}
			if !found {
				unsure = append(unsure, b)
			}
		}
	}
	return donors, unsure
}

// corroborate picks a copy for each block every current replica had to
// settle. Each settled copy is some whole write or bit rot, and the
// settle cannot tell which; but rot never makes the same bytes twice, so
// a current copy that another fenced replica (current or not) holds byte
// for byte is a write. The first current replica (in order) whose copy is
// corroborated is the donor; the source keeps its own when it is, or when
// none is (then the block stays the known activity-log limitation). Sim
// seed all/110: the source's rotted copy was copied over a current
// replica's good one, which a stale replica held too.
func (e *Engine) corroborate(t *openTask, current []proto.ReplicaID, blocks []uint64, donors []donor, done func([]donor)) {
	if e.opening != t {
		return
	}
	if len(blocks) == 0 {
		done(donors)
		return
	}
	b := blocks[0]
	var ids []proto.ReplicaID
	for id := range t.fenced {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	copies := map[proto.ReplicaID][]byte{}
	left := len(ids)
	decide := func() {
		for _, c := range current {
			mine, ok := copies[c]
			if !ok {
				continue
			}
			for _, o := range ids {
				if theirs, ok := copies[o]; ok && o != c && bytes.Equal(mine, theirs) {
					if c != current[0] {
						donors = append(donors, donor{block: b, from: c})
					}
					e.corroborate(t, current, blocks[1:], donors, done)
					return
				}
			}
		}
		if _, ok := copies[current[0]]; !ok {
			// The source cannot read its copy at all (a settle found it
			// rotted) and no current replica's copy is corroborated:
			// take the verified copy of an RW member of the adopted
			// membership that could not prove it is current. It holds
			// every acknowledged flush (they reached every RW member),
			// so its copy is some write the volume held; the source's is
			// none (sim all/297: rot on the only current replica
			// stopped every rebuild at it).
			for _, o := range ids {
				if _, ok := copies[o]; ok && t.best != nil && t.best.Mode(o) == proto.ModeRW && t.fenced[o].Membership != nil {
					donors = append(donors, donor{block: b, from: o})
					break
				}
			}
		}
		e.corroborate(t, current, blocks[1:], donors, done)
	}
	for _, id := range ids {
		e.send(id, proto.Request{Op: proto.OpRead, BlockIndex: b, BlockCount: 1}, func(rep proto.Reply) {
			if e.opening != t {
				return
			}
			if rep.Status == proto.StatusOK && len(rep.Data) == proto.BlockSize {
				copies[id] = append([]byte(nil), rep.Data...)
			}
			if left--; left == 0 {
				decide()
			}
		})
	}
}

func inExtents(list []proto.Extent, b uint64) bool {
	for _, x := range list {
		if b >= x.BlockIndex && b < x.BlockIndex+x.BlockCount {
			return true
		}
	}
	return false
}

// repairSuspects copies each donor's block over the source's head, one at
// a time, before the source's head is copied to the others.
func (e *Engine) repairSuspects(t *openTask, current []proto.ReplicaID, donors []donor, done func(string)) {
	if e.opening != t {
		return
	}
	if len(donors) == 0 {
		done("")
		return
	}
	d := donors[0]
	read := proto.Request{Op: proto.OpLayerRead, BlockIndex: d.block, BlockCount: 1}
	e.send(d.from, read, func(rep proto.Reply) {
		if e.opening != t {
			return
		}
		if rep.Status != proto.StatusOK {
			done(fmt.Sprintf("read suspect block %d from %s: %v %s", d.block, d.from, rep.Status, rep.Err))
			return
		}
		w := proto.Request{Op: proto.OpLayerWrite, BlockIndex: d.block, BlockCount: 1, Data: rep.Data, Blocks: rep.Blocks}
		e.send(current[0], w, func(rep proto.Reply) {
			if e.opening != t {
				return
			}
			if rep.Status != proto.StatusOK {
				done(fmt.Sprintf("repair suspect block %d on %s: %v %s", d.block, current[0], rep.Status, rep.Err))
				return
			}
			e.repairSuspects(t, current, donors[1:], done)
		})
	})
}

// epochNonceBits is how many low bits of an epoch name the engine that
// took it.
const epochNonceBits = 16

// NextEpoch returns the smallest epoch above seen whose low bits are the
// nonce's: a round number above seen's round, tagged with the engine.
// Two engines that saw the same replicas take different epochs, so a
// replica fenced by one refuses the other (sim seed 551: two engines
// both took epoch 9 and both served).
func NextEpoch(seen, nonce uint64) uint64 {
	round := seen>>epochNonceBits + 1
	return round<<epochNonceBits | nonce&(1<<epochNonceBits-1)
}

// backingMismatch says why a replica cannot be part of a volume on the
// backing image whose checksum is want: its shared bottom layer is another
// image (it never writes that layer, so no rebuild can fix it). "" when it
// matches, or either checksum is unknown.
func (e *Engine) backingMismatch(id proto.ReplicaID, info *proto.Info, want string) string {
	if want == "" || info == nil || info.BackingSHA256 == "" || info.BackingSHA256 == want {
		return ""
	}
	image := "?"
	if len(info.Chain) > 0 {
		image = strings.TrimPrefix(info.Chain[0], proto.BackingPrefix)
	}
	return fmt.Sprintf("replica %s is on backing image %q with sha256 %s, but the volume's image has sha256 %s (recreate the replica on the right image, or without one)",
		id, image, info.BackingSHA256, want)
}

// checkBackingChain says why the volume cannot open as declared on
// Config.BackingImage, given the current replicas' chain. A new volume
// must start on it; an older one may have merged it away (deleting the
// backing snapshot), but never be on another.
func (e *Engine) checkBackingChain(chain []string, isNew bool) string {
	name := e.cfg.BackingImage
	if name == "" || len(chain) > 0 && chain[0] == proto.BackingPrefix+name {
		return ""
	}
	if len(chain) > 0 && strings.HasPrefix(chain[0], proto.BackingPrefix) {
		return fmt.Sprintf("the volume is on backing image %q, not %q", strings.TrimPrefix(chain[0], proto.BackingPrefix), name)
	}
	if isNew {
		return fmt.Sprintf("the replicas were not created on backing image %q (create them with drover replica --backing-image %s)", name, name)
	}
	return ""
}

// suspectCopy is a block to copy from the resync source over another
// current replica's suspect copy.
type suspectCopy struct {
	block uint64
	to    proto.ReplicaID
}

// othersSuspects lists the suspect blocks of the current replicas but
// the source. The checksum comparison of the resync cannot see them: a
// block a settle found rotted keeps its index checksum (the right one)
// over wrong data (a lost data write, sim swarm/297).
func othersSuspects(t *openTask, current []proto.ReplicaID) []suspectCopy {
	var out []suspectCopy
	for _, id := range current[1:] {
		for _, x := range t.fenced[id].Suspect {
			for b := x.BlockIndex; b < x.BlockIndex+x.BlockCount; b++ {
				out = append(out, suspectCopy{block: b, to: id})
			}
		}
	}
	return out
}

// repairOthers copies the source's head block over each listed copy, one
// at a time. Best effort: a copy that fails stays corrupt, for read
// repair to find.
func (e *Engine) repairOthers(t *openTask, current []proto.ReplicaID, list []suspectCopy, done func(string)) {
	if e.opening != t {
		return
	}
	if len(list) == 0 {
		done("")
		return
	}
	c := list[0]
	next := func() { e.repairOthers(t, current, list[1:], done) }
	e.send(current[0], proto.Request{Op: proto.OpLayerRead, BlockIndex: c.block, BlockCount: 1}, func(rep proto.Reply) {
		if e.opening != t {
			return
		}
		if rep.Status != proto.StatusOK {
			next()
			return
		}
		w := proto.Request{Op: proto.OpLayerWrite, BlockIndex: c.block, BlockCount: 1, Data: rep.Data, Blocks: rep.Blocks}
		e.send(c.to, w, func(proto.Reply) {
			if e.opening != t {
				return
			}
			next()
		})
	})
}
