package sim

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/model"
)

// checkTimeout bounds porcupine per era; a timeout is a failure to look
// at, never a pass.
const checkTimeout = 20 * time.Second

// checkConvergence compares every block of every replica's current view:
// all must be identical (data, or zeros).
func (s *Sim) checkConvergence() {
	size := s.current().e.SizeBytes() / proto.BlockSize
	zero := make([]byte, proto.BlockSize)
	members := s.memberNodes()
	view := func(n *replicaNode, b uint64) []byte {
		layer, kind := n.r.Resolve(b)
		if kind != proto.BlockData {
			return zero
		}
		if d := n.st.Block(layer, b); d != nil {
			return d
		}
		return zero
	}
	for i, n := range members {
		if n.r.SizeBytes() != size*proto.BlockSize {
			s.fail("convergence: %s holds %d bytes, volume has %d", n.id, n.r.SizeBytes(), size*proto.BlockSize)
			return
		}
		if i == 0 {
			continue
		}
		for b := uint64(0); b < size; b++ {
			if !bytes.Equal(view(members[0], b), view(n, b)) {
				s.fail("convergence: block %d differs between %s and %s", b, members[0].id, n.id)
				return
			}
		}
	}
	for _, n := range members {
		if n.spare {
			s.count("spare-member") // a spare replaced a member
		}
	}
	s.count("converged")
}

// check runs the checkers that look at the whole history.
func (s *Sim) check() {
	h := s.hist
	if h.maxLatencyUs > livenessBoundUs {
		s.fail("liveness: a request after healing took %dms (bound %dms)", h.maxLatencyUs/1000, livenessBoundUs/1000)
	}
	if !s.stopped {
		s.fail("liveness: the run ended without converging")
	}
	for i, e := range h.eras {
		ops := h.porcupineOps(e, i)
		if len(ops) == 0 {
			continue
		}
		res, info := model.Check(ops, checkTimeout)
		switch res {
		case porcupine.Ok:
		case porcupine.Unknown:
			s.fail("linearizability: checker timed out on era %d (%d operations)", i, len(ops))
		default:
			s.fail("linearizability: era %d (%d operations) is not linearizable", i, len(ops))
			h.visualPath = s.writeVisualization(i, info)
		}
	}
}

func (s *Sim) writeVisualization(era int, info porcupine.LinearizationInfo) string {
	dir := s.opt.TraceDir
	if dir == "" {
		return ""
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return ""
	}
	path := filepath.Join(dir, fmt.Sprintf("seed-%d-era-%d.html", s.opt.Seed, era))
	if err := model.WriteVisualization(path, info); err != nil {
		return ""
	}
	return path
}
