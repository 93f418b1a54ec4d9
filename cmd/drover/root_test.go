package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestRootHelpExplainsDrover(t *testing.T) {
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs([]string{"--help"})
	if err := root.Execute(); err != nil {
		t.Fatalf("drover --help: %v", err)
	}
	for _, want := range []string{"replicated block storage", "subcommands"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("drover --help output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestRootRejectsUnknownArguments(t *testing.T) {
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs([]string{"no-such-subcommand"})
	if err := root.Execute(); err == nil {
		t.Fatalf("drover no-such-subcommand succeeded; want an error")
	}
}
