package nbdbench

import (
	"context"
	"encoding/json"
	"os"
	"testing"
	"time"
)

// BenchmarkNBDServers runs the whole comparison once per directory
// (tmpfs when /dev/shm exists, then the temp directory's disk) and
// prints the tables; it is what `make bench` runs, never `make test`.
// NBDBENCH_JSON names a file for the JSON report; NBDBENCH_RUNTIME
// overrides each fio run's duration (default 5s).
func BenchmarkNBDServers(b *testing.B) {
	runtime := 5 * time.Second
	if v := os.Getenv("NBDBENCH_RUNTIME"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatal(err)
		}
		runtime = d
	}
	dirs := []string{os.TempDir()}
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		dirs = append([]string{"/dev/shm"}, dirs...)
	}
	var reports []*Report
	for range b.N {
		reports = reports[:0]
		for _, dir := range dirs {
			rep, err := Run(context.Background(), Config{Dir: dir, Runtime: runtime})
			if err != nil {
				b.Fatal(err)
			}
			reports = append(reports, rep)
		}
	}
	for _, rep := range reports {
		b.Log("\n" + rep.Table())
	}
	if path := os.Getenv("NBDBENCH_JSON"); path != "" {
		out, err := json.MarshalIndent(reports, "", "  ")
		if err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(path, out, 0o644); err != nil {
			b.Fatal(err)
		}
	}
}
