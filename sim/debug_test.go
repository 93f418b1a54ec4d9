package sim

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/drover-io/drover/model"
)

// TestDebugSeed prints the first non-linearizable block of a seed.
func TestDebugSeed(t *testing.T) {
	var lines []string
	opt := Options{Seed: 1, Profile: "net", Ops: 1000, Log: func(l string) { lines = append(lines, l) }}
	defer func() {
		for _, l := range lines {
			if strings.Contains(l, "engine") || strings.Contains(l, "link") || strings.Contains(l, "partition") || strings.Contains(l, "heal") {
				fmt.Println(l)
			}
		}
	}()
	rng := newRNG(opt.Seed)
	knobs, _ := ProfileKnobs(opt.Profile, rng)
	s := &Sim{opt: opt, knobs: knobs, rng: rng, trace: 14695981039346656037, stats: map[string]int{}}
	s.hist = newHistory(s)
	s.setup()
	s.loop()
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
			for _, op := range bops {
				in, out := op.Input.(model.BlockInput), op.Output.(model.BlockOutput)
				fmt.Printf("block %d c%d call %d ret %d write=%v val=%d out=%d unknown=%v\n", b, op.ClientId, op.Call, op.Return, in.Write, in.Value, out.Value, out.Unknown)
			}
			return
		}
	}
}
