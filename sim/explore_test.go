package sim

import (
	"os"
	"testing"
)

func TestExplore(t *testing.T) {
	prof := os.Getenv("SIM_PROFILE")
	if prof == "" {
		t.Skip()
	}
	n := 0
	RunSeeds(1, 401, 2, Options{Profile: prof, Ops: 1500}, func(r *Result) {
		if !r.OK() && n < 8 {
			n++
			t.Errorf("%s\n  %s\n  %v", r.Describe(), r.Knobs, r.Failures)
		}
	})
}
