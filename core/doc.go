// Package core holds Drover's replication core: pure, deterministic state
// machines that take inputs (frontend requests, peer messages, disk
// completions, timer ticks) and return effects (disk IOs to issue, messages
// to send, replies, timers to arm) as plain values.
//
// The purity rule: a non-test file under core/ imports only core's own
// packages and an allowlist of pure standard library packages (bytes, fmt,
// encoding/binary, hash/crc32, sort, strings and the like: no time, os,
// net, sync, log, runtime or crypto/rand, and no other module), and starts
// no goroutine. Clocks arrive as tick inputs,
// randomness as a caller-provided seed, and IO as effects that a driver (the
// simulator in sim/ or the production transports) executes and feeds back
// as completions. TestCorePurity and TestLayering (layering_test.go at the
// repository root) enforce the rule on every file's syntax tree and on the
// import graph, so it is a test, not a convention.
//
// docs/ARCHITECTURE.md describes the subpackages and what each owns.
package core
