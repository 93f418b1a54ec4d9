package engine

import "fmt"

// invariant panics: an invariant the design relies on does not hold.
// The checks are cheap (a comparison at each point that changes the
// state they guard), so they stay on in production: an engine that found
// its own state impossible stops rather than acknowledge a write or
// record a membership on top of it. The simulator and every test run
// them, so a violation there names the broken rule instead of showing up
// later as a checker failure far from its cause.
//
// Call sites test the condition themselves and call invariant only when
// it fails: its arguments would otherwise be boxed on every call, an
// allocation per request on the data path.
func invariant(format string, args ...any) {
	panic("engine invariant: " + fmt.Sprintf(format, args...))
}
