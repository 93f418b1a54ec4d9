// Command pause is the sandbox image of make e2e's cluster (containerd's
// sandbox_image): it waits for a signal and exits. There is no registry
// to pull registry.k8s.io/pause from.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}
