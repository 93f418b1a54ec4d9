// Command drover is the single Drover binary. Every subcommand is thin glue
// over the packages below it; see docs/ARCHITECTURE.md.
package main

import (
	"os"
	"runtime/debug"
)

// defaultGCPercent is the garbage collector's target when GOGC is not set.
// The data path allocates a few small objects and a block buffer per
// request while its live heap is small, so Go's default (100) collects
// every few milliseconds under load; 400 trades a few tens of MiB of heap
// for a quarter of the collections.
const defaultGCPercent = 400

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
	if err := newRootCmd().Execute(); err != nil {
		os.Exit(1)
	}
}
