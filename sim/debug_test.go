package sim

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/model"
)

// TestDebugSeed prints the first non-linearizable block of a seed.
func TestDebugSeed(t *testing.T) {
	var lines []string
	seed, err := strconv.ParseUint(os.Getenv("SIM_DEBUG"), 10, 64)
	if err != nil {
		t.Skip("set SIM_DEBUG=seed")
	}
	opt := Options{Seed: seed, Profile: os.Getenv("SIM_PROFILE"), Ops: envOps(), Log: func(l string) { lines = append(lines, l) }}
	if opt.Profile == "" {
		opt.Profile = "swarm"
	}
	defer func() {
		for _, l := range lines {
			if strings.Contains(l, "engine") || strings.Contains(l, "link") || strings.Contains(l, "partition") || strings.Contains(l, "heal") || strings.Contains(l, "crash") || strings.Contains(l, "start") || strings.Contains(l, "era") || strings.Contains(l, "revert") {
				fmt.Println(l)
			}
		}
	}()
	s, err := newSim(opt)
	if err != nil {
		t.Fatal(err)
	}
	peekBlock(s)
	s.loop()
	if bs := os.Getenv("SIM_BLOCK"); bs != "" && os.Getenv("SIM_PEEK") == "" {
		want, _ := strconv.ParseUint(bs, 10, 64)
		for i, e := range s.hist.eras {
			fmt.Printf("era %d start %d init %d under %v\n", i, e.start, e.init[want], e.under[want])
			for _, op := range e.ops {
				if op.req.Op == proto.OpFlush {
					fmt.Printf("  flush c%d call %d ret %d ok=%v\n", op.client, op.call, op.ret, op.ok)
					continue
				}
				if want >= op.req.BlockIndex && want < op.req.BlockIndex+uint64(op.req.BlockCount) {
					v := uint64(0)
					if op.req.Op == proto.OpWrite {
						v = op.value(want)
					} else if op.req.Op == proto.OpRead && op.ok {
						v = op.values[want-op.req.BlockIndex]
					}
					fmt.Printf("  %v c%d call %d ret %d ok=%v fua=%v value=%d\n", op.req.Op, op.client, op.call, op.ret, op.ok, op.req.FUA, v)
				}
			}
		}
		return
	}
	for i, e := range s.hist.eras {
		ops := s.hist.porcupineOps(e, i)
		byBlock := map[uint64][]porcupine.Operation{}
		for _, op := range ops {
			b := op.Input.(model.BlockInput).Block
			byBlock[b] = append(byBlock[b], op)
		}
		for b, bops := range byBlock {
			res, _ := model.Check(bops, 10*time.Second)
			if res == porcupine.Ok {
				continue
			}
			sort.Slice(bops, func(i, j int) bool { return bops[i].Call < bops[j].Call })
			lo, hi := 1, len(bops)
			for lo < hi { // smallest failing prefix
				mid := (lo + hi) / 2
				if r, _ := model.Check(bops[:mid], 10*time.Second); r == porcupine.Ok {
					lo = mid + 1
				} else {
					hi = mid
				}
			}
			fmt.Printf("smallest failing prefix: %d of %d ops\n", lo, len(bops))
			bops = bops[:lo]
			for _, op := range bops {
				in, out := op.Input.(model.BlockInput), op.Output.(model.BlockOutput)
				fmt.Printf("block %d c%d call %d ret %d write=%v val=%d out=%d unknown=%v\n", b, op.ClientId, op.Call, op.Return, in.Write, in.Value, out.Value, out.Unknown)
			}
			return
		}
	}
}

// peekBlock schedules, at each virtual time in SIM_PEEK (comma separated),
// a print of block SIM_BLOCK's value in every layer of every replica.
func peekBlock(s *Sim) {
	b, err := strconv.ParseUint(os.Getenv("SIM_BLOCK"), 10, 64)
	if err != nil {
		return
	}
	for _, ts := range strings.Split(os.Getenv("SIM_PEEK"), ",") {
		at, err := strconv.ParseInt(ts, 10, 64)
		if err != nil {
			continue
		}
		s.at(at, func() {
			for _, n := range s.replicas {
				line := fmt.Sprintf("peek %d %s up=%v:", s.now, n.id, n.up)
				for _, id := range n.st.LayerIDs() {
					buf := n.st.Block(id, b)
					if buf == nil {
						e, ok := n.st.Entry(id, b)
						line += fmt.Sprintf(" L%v(%s)=-/%v/%v", id, n.r.LayerName(id), ok, e.Kind)
						continue
					}
					v, ok := unstamp(buf, b)
					e, _ := n.st.Entry(id, b)
					line += fmt.Sprintf(" L%v(%s)=%d/%v/%d", id, n.r.LayerName(id), v, ok, e.CRC)
				}
				fmt.Println(line)
			}
		})
	}
}
