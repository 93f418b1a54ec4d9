package sim

import "testing"

func TestSmoke(t *testing.T) {
	for _, p := range []string{"none", "net", "disk", "crash", "split", "snap", "all"} {
		r := Run(Options{Seed: 1, Profile: p, Ops: 1000, TraceDir: t.TempDir()})
		t.Log(r.Describe())
		for _, f := range r.Failures {
			t.Errorf("%s: %s", p, f)
		}
	}
}
