package engine_test

import (
	"strings"
	"testing"

	"github.com/drover-io/drover/core/engine"
	"github.com/drover-io/drover/core/proto"
)

// TestTasksShowStages: an engine's tasks name their stage as they go: a
// rebuild's stages while it copies, an admin request queued behind it,
// and an open waiting for a replica.
func TestTasksShowStages(t *testing.T) {
	c := newCluster(t, 3, 64*proto.BlockSize, engine.Config{Volume: "v", RebuildAfterTicks: 5, TimeoutTicks: 20})
	if tasks := c.Engine().Tasks(); len(tasks) != 0 {
		t.Fatalf("a settled engine lists tasks: %v", tasks)
	}
	for b := uint64(0); b < 64; b++ {
		c.write(b, b+1)
	}
	c.SetDown("r3", true)
	c.write(0, 100) // r3 fails this write and goes ERR
	c.SetDown("r3", false)

	stages := map[string]bool{}
	queued := false
	c.SubmitAdmin(engine.AdminRequest{Op: engine.AdminSnapshot, Name: "s1"})
	c.RunUntil(func() bool {
		for _, tk := range c.Engine().Tasks() {
			switch tk.Kind {
			case engine.TaskRebuild:
				stages[tk.Stage] = true
				if !strings.Contains(tk.Detail, "r3 from ") {
					t.Fatalf("rebuild task detail %q does not name the target and source", tk.Detail)
				}
			case engine.TaskAdmin:
				queued = queued || strings.Contains(tk.String(), "snapshot s1")
			}
		}
		return c.Engine().Info().Rebuild == nil && modeOf(c.Engine().Info(), "r3") == engine.ModeRW
	}, 5000)
	for _, want := range []string{"open", "join", "copy", "promote"} {
		if !stages[want] {
			t.Errorf("rebuild stage %q never listed (saw %v)", want, stages)
		}
	}
	if !queued {
		t.Errorf("the snapshot request was never listed as an admin task")
	}

	// A new engine that finds no replica waits to open, and says why.
	for _, id := range []proto.ReplicaID{"r1", "r2", "r3"} {
		c.SetDown(id, true)
	}
	c.RestartEngine()
	c.RunUntil(func() bool {
		tasks := c.Engine().Tasks()
		return len(tasks) > 0 && tasks[0].Stage == "retry"
	}, 2000)
	tasks := c.Engine().Tasks()
	if len(tasks) == 0 || tasks[0].Kind != engine.TaskOpen {
		t.Fatalf("an engine that cannot open lists %v, want an open task first", tasks)
	}
	if s := tasks[0].String(); !strings.Contains(s, "open retry") || !strings.Contains(s, "answered") {
		t.Errorf("open task %q does not say it waits for replicas to answer", s)
	}
}

func modeOf(info engine.VolumeInfo, id proto.ReplicaID) engine.Mode {
	for _, r := range info.Replicas {
		if r.ID == id {
			return r.Mode
		}
	}
	return engine.ModeNone
}
