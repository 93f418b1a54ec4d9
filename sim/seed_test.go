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
	opt := Options{Seed: seed, Profile: prof, Ops: envOps(), TraceDir: t.TempDir()}
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

// envOps reads SIM_OPS (client operations per run) for the debug tests.
func envOps() int {
	if n, err := strconv.Atoi(os.Getenv("SIM_OPS")); err == nil && n > 0 {
		return n
	}
	return 2000
}
