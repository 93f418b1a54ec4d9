package iscsi_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drover-io/drover/frontends/iscsi"
	"github.com/drover-io/drover/transports/device"
)

// syncBuffer is a log sink tests read while the server writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestCHAPThrottleAndDiscovery: with real libiscsi initiators, failed
// CHAP logins of one initiator from one address are logged with their
// count and slow the next attempt by a doubling delay up to the cap; a
// correct login still gets in and clears the count; discovery with
// DiscoveryCHAP refuses iscsi-ls without credentials and lists the
// target with them.
func TestCHAPThrottleAndDiscovery(t *testing.T) {
	needTool(t, "iscsi-inq")
	needTool(t, "iscsi-ls")
	chap := &iscsi.CHAP{User: testUser, Secret: testSecret}
	logs := &syncBuffer{}
	srv, err := iscsi.Listen(iscsi.Config{Addr: "127.0.0.1:0",
		Targets:          []iscsi.TargetConfig{{Volume: "guarded", LUNs: []device.Device{fileLUN(t)}, CHAP: chap}},
		DiscoveryCHAP:    chap,
		Logger:           slog.New(slog.NewTextHandler(logs, nil)),
		AuthFailureDelay: 10 * time.Millisecond, AuthFailureDelayMax: 40 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	defer func() { cancel(); <-done }()
	addr := srv.Addr().String()
	url := func(secret string) string {
		return fmt.Sprintf("iscsi://%s%%%s@%s/%s/0", testUser, secret, addr, iscsi.IQN("guarded"))
	}
	for range 4 {
		if out, err := run(t, "iscsi-inq", url("not-the-secret-at-all")); err == nil || !strings.Contains(out, "Authentication failure") {
			t.Fatalf("wrong secret: %v\n%s", err, out)
		}
	}
	for i, delay := range []string{"10ms", "20ms", "40ms", "40ms"} {
		want := fmt.Sprintf("failures=%d next_attempt_delay=%s", i+1, delay)
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}
	if out, err := run(t, "iscsi-inq", url(testSecret)); err != nil || !strings.Contains(out, "DROVER") {
		t.Fatalf("right secret after failures: %v\n%s", err, out)
	}
	if out, err := run(t, "iscsi-inq", url("not-the-secret-at-all")); err == nil {
		t.Fatalf("wrong secret accepted:\n%s", out)
	}
	if n := strings.Count(logs.String(), "failures=1 "); n != 2 {
		t.Errorf("a success did not reset the count (%d first failures logged):\n%s", n, logs.String())
	}

	if out, err := run(t, "iscsi-ls", "-s", "iscsi://"+addr); err == nil || strings.Contains(out, iscsi.IQN("guarded")) {
		t.Errorf("discovery without CHAP listed the target: %v\n%s", err, out)
	}
	out, err := run(t, "iscsi-ls", "-s", fmt.Sprintf("iscsi://%s%%%s@%s", testUser, testSecret, addr))
	if err != nil || !strings.Contains(out, "Target:"+iscsi.IQN("guarded")) {
		t.Errorf("discovery with CHAP: %v\n%s", err, out)
	}
	if out, err := run(t, "iscsi-ls", "-s", fmt.Sprintf("iscsi://%s%%wrong-secret-123@%s", testUser, addr)); err == nil {
		t.Errorf("discovery with a wrong secret succeeded:\n%s", out)
	}
	if !strings.Contains(logs.String(), "discovery=true failures=") {
		t.Errorf("a failed discovery login is not logged:\n%s", logs.String())
	}
}
