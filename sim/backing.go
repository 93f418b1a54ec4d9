package sim

import (
	"github.com/drover-io/drover/core/memstore"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/core/replica"
	"github.com/drover-io/drover/core/store"
)

// simImageSHA256 stands for the image's checksum: recorded on the
// replicas created on it and given to every engine, so the checks of
// engine.Config.BackingImage and BackingSHA256 run under every fault.
const simImageSHA256 = "51a1"

// backingBaseID is added to a block index to make the write id its
// backing image holds: far above any id a client stamps.
const backingBaseID = 1 << 50

// onBacking reports whether this run's initial replicas are created on a
// backing image: a third of the seeds of every profile (decided by the
// seed alone, so no PRNG draw moves).
func (s *Sim) onBacking() bool { return s.opt.Seed%3 == 0 }

// backingHolds reports whether the image holds block b (the first half of
// the volume but every fifth block, which stays a hole and reads zeros).
func (s *Sim) backingHolds(b uint64) bool { return b < s.knobs.SizeBlocks/2 && b%5 != 4 }

// populateBacking writes the backing image into st as the layer a replica
// created on it reads (replica.BackingLayerID), durably, as a node's copy
// of the image would be before any replica uses it.
func (s *Sim) populateBacking(st *memstore.Store) {
	id := replica.BackingLayerID
	st.Execute(store.IO{Kind: store.CreateLayer, Layer: id})
	var entries []proto.BlockState
	blk := make([]byte, proto.BlockSize)
	for b := uint64(0); b < s.knobs.SizeBlocks; b++ {
		if !s.backingHolds(b) {
			continue
		}
		stamp(blk, backingBaseID+b, b)
		st.Execute(store.IO{Kind: store.WriteData, Layer: id, BlockIndex: b, Data: blk})
		entries = append(entries, proto.BlockState{BlockIndex: b, Kind: proto.BlockData, CRC: replica.CRC(blk)})
	}
	st.Execute(store.IO{Kind: store.SyncData, Layer: id})
	st.Execute(store.IO{Kind: store.WriteIndex, Layer: id, Entries: entries})
	st.Execute(store.IO{Kind: store.SyncIndex, Layer: id})
}

// backingSetup puts the image under the initial replicas and makes it the
// first era's content.
func (s *Sim) backingSetup(nodes []*replicaNode) {
	if !s.onBacking() {
		return
	}
	for _, n := range nodes {
		s.populateBacking(n.st)
		n.backing = &replica.Backing{Image: "sim", SHA256: simImageSHA256}
	}
	init := s.hist.eras[0].init
	for b := uint64(0); b < s.knobs.HotBlocks; b++ {
		if s.backingHolds(b) {
			init[b] = backingBaseID + b
		}
	}
	s.count("backing")
}
