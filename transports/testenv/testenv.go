// Package testenv decides what a test does when this machine lacks
// something the test needs: a tool, root, FUSE, a loop device, network
// namespaces. On a developer's machine the test skips and says what to
// install; with DROVER_REQUIRE_TOOLS=1 (.ci/run sets it, having installed
// everything) the same test fails, so CI can never pass by skipping.
//
// Skips that are opt-ins (long benchmarks behind their own variable,
// -short) are not environment gaps and do not come through here.
// It is test support only; nothing in the binary imports it, and it
// imports nothing of Drover's.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// RequireVar is the environment variable that turns a missing
// prerequisite into a failure when it is "1".
const RequireVar = "DROVER_REQUIRE_TOOLS"

// Required reports whether missing prerequisites fail tests.
func Required() bool { return os.Getenv(RequireVar) == "1" }

// Unavailable stops t because a prerequisite is missing: it skips, or,
// when Required, fails with the same message.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if Required() {
		t.Fatalf("%s (%s=1: a missing prerequisite is a failure)", msg, RequireVar)
		return
	}
	t.Skipf("%s; skipping", msg)
}

// NeedTools stops t (see Unavailable) unless every tool is on PATH.
// .ci/run installs them all.
func NeedTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			Unavailable(t, "%s is not installed (.ci/run installs it)", tool)
			return
		}
	}
}

// NeedRoot stops t (see Unavailable) unless the process runs as root;
// why says what root is needed for.
func NeedRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "needs root for %s", why)
	}
}

// NeedFUSE stops t (see Unavailable) unless /dev/fuse exists.
func NeedFUSE(t testing.TB) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		Unavailable(t, "no FUSE (%v)", err)
	}
}
