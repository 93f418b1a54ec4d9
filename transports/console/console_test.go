package console

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/drover-io/drover/core/proto"
	"github.com/drover-io/drover/transports/enginerun"
	"github.com/drover-io/drover/transports/replicadir"
	"github.com/drover-io/drover/transports/replicarun"
)

// newConsole serves the console of a volume on two filestore replicas
// over in-process links, on a real loopback HTTP server.
func newConsole(t *testing.T) *httptest.Server {
	t.Helper()
	runners := map[string]*replicarun.Runner{}
	cfg := enginerun.Config{Volume: "vol", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for i := 1; i <= 2; i++ {
		id := fmt.Sprintf("r%d", i)
		rd, err := replicadir.Open(replicadir.Config{Dir: t.TempDir(), ID: proto.ReplicaID(id), CreateSizeBytes: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		r := rd.Runner
		t.Cleanup(func() { _ = rd.Close() })
		runners[id] = r
		cfg.Replicas = append(cfg.Replicas, enginerun.Replica{ID: proto.ReplicaID(id), Addr: id})
	}
	cfg.Dial = replicarun.LocalDialer(runners)
	d, err := enginerun.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.WaitServing(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{Volume: enginerun.NewVolume(d), Interval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(c)
	t.Cleanup(srv.Close)
	return srv
}

func do(t *testing.T, method, url, body string, header ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(header); i += 2 {
		if header[i] == "Host" {
			req.Host = header[i+1]
		} else {
			req.Header.Set(header[i], header[i+1])
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestConsoleAPI: the page and its state load; a snapshot made through
// the API is in the next state; bad input gets a clear error with a
// fitting status; requests by another Host or from another origin are
// refused.
func TestConsoleAPI(t *testing.T) {
	srv := newConsole(t)
	if code, body := do(t, "GET", srv.URL+"/", ""); code != 200 || !strings.Contains(body, `<html lang="en">`) {
		t.Fatalf("GET /: %d %.200s", code, body)
	}
	if code, body := do(t, "GET", srv.URL+"/app.js", ""); code != 200 || !strings.Contains(body, "EventSource") {
		t.Fatalf("GET /app.js: %d %.200s", code, body)
	}
	if code, body := do(t, "POST", srv.URL+"/api/snapshots", `{"name":"s1","labels":{"k":"v"}}`); code != 200 {
		t.Fatalf("create snapshot: %d %s", code, body)
	}
	code, body := do(t, "GET", srv.URL+"/api/state", "")
	var st State
	if err := json.Unmarshal([]byte(body), &st); code != 200 || err != nil {
		t.Fatalf("GET /api/state: %d %v %.300s", code, err, body)
	}
	if st.Phase != "serving" || st.Robustness != "healthy" || len(st.Replicas) != 2 || len(st.Snapshots) != 2 ||
		st.Snapshots[0].Name != "s1" || st.Snapshots[0].Labels["k"] != "v" || !st.Snapshots[1].Head ||
		st.Settings.ReplicaTimeoutSec != 5 || st.Settings.ReplaceAfterSec != 60 || st.Settings.MinHealthy != 1 {
		t.Fatalf("state after a snapshot: %+v", st)
	}
	for _, c := range []struct {
		method, path, body string
		header             []string
		code               int
		says               string
	}{
		{"POST", "/api/snapshots", `{"name":"s1"}`, nil, 409, "exists"},
		{"POST", "/api/snapshots", `{"name":"head"}`, nil, 400, "volume head"},
		{"POST", "/api/snapshots", `{"nam":"x"}`, nil, 400, "unknown field"},
		{"POST", "/api/snapshots", `not json`, nil, 400, "request body"},
		{"DELETE", "/api/snapshots/nope", "", nil, 404, "nope"},
		{"POST", "/api/replicas", `{"id":"r9"}`, nil, 400, "needs an address"},
		{"POST", "/api/replicas", `{"address":"r9"}`, nil, 503, "unreachable"},
		{"POST", "/api/snapshots", `{"name":"s2"}`, []string{"Origin", "http://evil.example"}, 403, "cross-origin"},
		{"GET", "/api/state", "", []string{"Host", "evil.example:80"}, 403, "not a loopback"},
	} {
		code, body := do(t, c.method, srv.URL+c.path, c.body, c.header...)
		if code != c.code || !strings.Contains(body, c.says) {
			t.Errorf("%s %s %s %v: %d %s; want %d saying %q", c.method, c.path, c.body, c.header, code, body, c.code, c.says)
		}
	}
	req, _ := http.NewRequest("POST", srv.URL+"/api/snapshots", strings.NewReader("name=x"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 403 {
		t.Errorf("a form post (no CORS preflight) was not refused: %v %v", resp, err)
	}
}

// TestConsoleStream: the live stream sends the state as an SSE "state"
// event, and again after it changed.
func TestConsoleStream(t *testing.T) {
	srv := newConsole(t)
	resp, err := http.Get(srv.URL + "/api/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("stream Content-Type %q", ct)
	}
	events := make(chan State, 4)
	go func() {
		dec := newSSEReader(resp.Body)
		for {
			kind, data, err := dec.next()
			if err != nil {
				close(events)
				return
			}
			var st State
			if kind == "state" && json.Unmarshal([]byte(data), &st) == nil {
				events <- st
			}
		}
	}()
	first := <-events
	if len(first.Snapshots) != 1 {
		t.Fatalf("first state has %d layers, want the head alone", len(first.Snapshots))
	}
	if code, body := do(t, "POST", srv.URL+"/api/snapshots", `{"name":"live"}`); code != 200 {
		t.Fatalf("create snapshot: %d %s", code, body)
	}
	for st := range events {
		if len(st.Snapshots) == 2 && st.Snapshots[0].Name == "live" {
			return
		}
	}
	t.Fatal("the stream ended without showing snapshot live")
}

// sseReader splits a text/event-stream into (event, data) pairs.
type sseReader struct {
	r       io.Reader
	pending string
}

func newSSEReader(r io.Reader) *sseReader { return &sseReader{r: r} }

func (s *sseReader) next() (kind, data string, err error) {
	for {
		if i := strings.Index(s.pending, "\n\n"); i >= 0 {
			msg := s.pending[:i]
			s.pending = s.pending[i+2:]
			for _, line := range strings.Split(msg, "\n") {
				if v, ok := strings.CutPrefix(line, "event: "); ok {
					kind = v
				} else if v, ok := strings.CutPrefix(line, "data: "); ok {
					data = v
				}
			}
			return kind, data, nil
		}
		b := make([]byte, 64<<10)
		n, err := s.r.Read(b)
		if n == 0 && err != nil {
			return "", "", err
		}
		s.pending += string(b[:n])
	}
}
