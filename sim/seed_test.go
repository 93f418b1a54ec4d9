package sim

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestSeed runs one seed given by SIM_SEED (and SIM_PROFILE), verbosely.
func TestSeed(t *testing.T) {
	seed, err := strconv.ParseUint(os.Getenv("SIM_SEED"), 10, 64)
	if err != nil {
		t.Skip("set SIM_SEED")
	}
	prof := os.Getenv("SIM_PROFILE")
	var lines []string
	opt := Options{Seed: seed, Profile: prof, Ops: 2000, TraceDir: t.TempDir()}
	if os.Getenv("SIM_LOG") != "" {
		opt.Log = func(l string) { lines = append(lines, l) }
		defer func() {
			for _, l := range lines {
				if strings.Contains(l, os.Getenv("SIM_LOG")) {
					fmt.Println(l)
				}
			}
		}()
	}
	r := Run(opt)
	t.Log(r.Describe())
	t.Log(r.Knobs)
	for _, f := range r.Failures {
		t.Error(f)
	}
}
