// Package core holds Drover's replication core: pure, deterministic state
// machines that take inputs (frontend requests, peer messages, disk
// completions, timer ticks) and return effects (disk IOs to issue, messages
// to send, replies, timers to arm) as plain values.
//
// The purity rule: no non-test file under core/ may import time, os, os/*,
// net, net/*, sync, sync/atomic, math/rand, math/rand/v2, io/ioutil,
// syscall or unsafe, nor start a goroutine. Clocks arrive as tick inputs,
// randomness as a caller-provided seed, and IO as effects that a driver (the
// simulator in sim/ or the production transports) executes and feeds back
// as completions. TestPurity in this package enforces the rule on the syntax
// tree of every file, so it is a test, not a convention.
//
// docs/ARCHITECTURE.md describes the subpackages and what each owns.
package core
