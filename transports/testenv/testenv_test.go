package testenv

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// recorder is a testing.TB that records how a test was stopped instead
// of stopping the calling goroutine.
type recorder struct {
	testing.TB
	skipped, failed string
}

func (r *recorder) Helper() {}
func (r *recorder) Skipf(format string, args ...any) {
	r.skipped = strings.TrimSpace(format)
}
func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = strings.TrimSpace(format)
}

func TestUnavailableSkipsOrFails(t *testing.T) {
	for _, tc := range []struct {
		value    string
		wantFail bool
	}{{"", false}, {"0", false}, {"1", true}} {
		t.Setenv(RequireVar, tc.value)
		r := &recorder{TB: t}
		Unavailable(r, "no %s", "thing")
		if got := r.failed != ""; got != tc.wantFail || (r.skipped != "") == tc.wantFail {
			t.Errorf("%s=%q: skipped %q, failed %q; want failed=%v", RequireVar, tc.value, r.skipped, r.failed, tc.wantFail)
		}
	}
}

func TestNeedTools(t *testing.T) {
	t.Setenv(RequireVar, "1")
	r := &recorder{TB: t}
	NeedTools(r, "go-test-no-such-tool-drover")
	if r.failed == "" {
		t.Fatalf("a missing tool did not fail under %s=1", RequireVar)
	}
	t.Setenv("PATH", t.TempDir())
	r = &recorder{TB: t}
	NeedTools(r, "sh")
	if r.failed == "" {
		t.Fatalf("sh outside PATH did not fail under %s=1", RequireVar)
	}
}

func TestNeedToolsPresent(t *testing.T) {
	t.Setenv(RequireVar, "1")
	dir := t.TempDir()
	t.Setenv("PATH", dir)
	writeExecutable(t, dir, "drover-fake-tool")
	r := &recorder{TB: t}
	NeedTools(r, "drover-fake-tool")
	if r.failed != "" || r.skipped != "" {
		t.Fatalf("a present tool stopped the test: skipped %q, failed %q", r.skipped, r.failed)
	}
}

func writeExecutable(t *testing.T, dir, name string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}
