package sim

import "testing"

// BenchmarkSimRun runs whole simulations (swarm seeds 1..b.N at 2,000
// client operations) and reports simulated block operations per second.
func BenchmarkSimRun(b *testing.B) {
	var ops uint64
	for i := 0; i < b.N; i++ {
		r := Run(Options{Seed: uint64(i%50 + 1), Profile: "swarm", Ops: 2000})
		ops += r.BlockOps
	}
	b.ReportMetric(float64(ops)/b.Elapsed().Seconds(), "block-ops/s")
}
