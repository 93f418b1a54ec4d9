package enginerun

import (
	"testing"
	"time"
)

// BenchmarkIOStatsRecord is what counting costs a request on the data
// path: the clock read and the atomic adds (compare with
// BenchmarkFileVolume's microseconds per request).
func BenchmarkIOStatsRecord(b *testing.B) {
	var s IOStats
	b.ReportAllocs()
	for b.Loop() {
		s.record(IOWrite, 4096, time.Now(), nil)
	}
}

// TestIOStatsBuckets puts latencies in the bucket of their bound.
func TestIOStatsBuckets(t *testing.T) {
	var s IOStats
	now := time.Now()
	s.record(IORead, 4096, now.Add(time.Hour), nil) // a clock step back: counted as 0
	s.record(IORead, 4096, now.Add(-time.Minute), nil)
	st := s.Op(IORead)
	if st.Ops != 2 || st.Buckets[0] != 1 || st.Buckets[len(LatencyBounds)] != 1 || st.Bytes != 8192 {
		t.Fatalf("%+v", st)
	}
}
