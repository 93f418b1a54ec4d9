package metrics

import (
	"encoding/json"
	"os"
	"regexp"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestDashboardNamesExist keeps deploy/grafana's dashboard on the names
// the collectors export: every drover_* name in a panel's query must be
// one of theirs (a histogram's _bucket, _sum and _count included).
func TestDashboardNamesExist(t *testing.T) {
	const path = "../../deploy/grafana/drover-volumes.json"
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	known := map[string]bool{}
	descs := make(chan *prometheus.Desc, 100)
	NewVolume(nil, "", nil, &Jobs{}).Describe(descs)
	NewReplica(nil, "", nil).Describe(descs)
	close(descs)
	fq := regexp.MustCompile(`fqName: "([a-z_]+)"`)
	for d := range descs {
		m := fq.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("no name in %s", d)
		}
		for _, suffix := range []string{"", "_bucket", "_sum", "_count"} {
			known[m[1]+suffix] = true
		}
	}
	name := regexp.MustCompile(`drover_[a-z_]+`)
	used := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, n := range name.FindAllString(tg.Expr, -1) {
				used++
				if !known[n] {
					t.Errorf("panel %q queries %s, which no collector exports", p.Title, n)
				}
			}
		}
	}
	if used == 0 {
		t.Fatalf("%s queries no drover metric", path)
	}
}
