// Command drover is the single Drover binary. Every subcommand is thin glue
// over the packages below it; see docs/ARCHITECTURE.md.
package main

import "os"

func main() {
	if err := newRootCmd().Execute(); err != nil {
		os.Exit(1)
	}
}
