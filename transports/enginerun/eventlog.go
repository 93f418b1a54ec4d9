package enginerun

import (
	"sync"
	"time"

	"github.com/drover-io/drover/core/engine"
)

// recentEvents is how many events RecentEvents keeps.
const recentEvents = 100

// TimedEvent is an engine event and when the driver saw it.
type TimedEvent struct {
	Time time.Time
	engine.Event
}

// eventLog keeps the last recentEvents events in a ring. Events are rare
// (a corrupt block, a failed replica, a rebuild), so a mutex is cheap.
type eventLog struct {
	mu   sync.Mutex
	ring [recentEvents]TimedEvent
	n    uint64 // events ever added
}

func (l *eventLog) add(now time.Time, evs []engine.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, ev := range evs {
		l.ring[l.n%recentEvents] = TimedEvent{Time: now, Event: ev}
		l.n++
	}
}

// RecentEvents returns the volume's last events (at most 100), oldest
// first, and how many there have been since the driver started.
func (d *Driver) RecentEvents() ([]TimedEvent, uint64) {
	l := &d.recent
	l.mu.Lock()
	defer l.mu.Unlock()
	count := min(l.n, recentEvents)
	out := make([]TimedEvent, 0, count)
	for i := l.n - count; i < l.n; i++ {
		out = append(out, l.ring[i%recentEvents])
	}
	return out, l.n
}
