package sim

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"strconv"
	"testing"
)

func TestTmpDbg(t *testing.T) {
	seed, _ := strconv.ParseUint(os.Getenv("DBG_SEED"), 10, 64)
	b, _ := strconv.ParseUint(os.Getenv("DBG_BLOCK"), 10, 64)
	var lines []string
	s, _ := newSim(Options{Seed: seed, Profile: "swarm", Ops: 2000, Log: func(l string) { lines = append(lines, l) }})
	s.loop()
	s.check()
	for _, l := range lines {
		if len(os.Getenv("DBG_LOG")) > 0 && contains(l, os.Getenv("DBG_LOG")) {
			fmt.Println(l)
		}
	}
	tab := crc32.MakeTable(crc32.Castagnoli)
	for _, n := range s.replicas {
		layer, kind := n.r.Resolve(b)
		d := n.st.Block(layer, b)
		var id uint64
		var sum uint32
		if d != nil {
			id = binary.LittleEndian.Uint64(d)
			sum = crc32.Checksum(d, tab)
		}
		fmt.Printf("%s layer %d kind %v stamp %d crc %08x ids %v\n", n.id, layer, kind, id, sum, n.st.LayerIDs())
	}
	fmt.Println(s.failures)
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}
