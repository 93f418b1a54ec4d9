package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// The docs (README.md, docs/*.md, docs/decisions/*.md) may name only make
// targets the Makefile defines and drover flags the binary takes: a reader
// who copies a command from them must not meet "no rule to make target" or
// "unknown flag". Both tests read only code (fenced blocks and `spans`),
// where commands are written, so prose may still say "make sure".

// repoRoot is the repository's top directory, seen from cmd/drover.
const repoRoot = "../.."

// docFiles lists the Markdown files the checks read.
func docFiles(t *testing.T) []string {
	t.Helper()
	files := []string{filepath.Join(repoRoot, "README.md")}
	for _, pattern := range []string{"docs/*.md", "docs/decisions/*.md"} {
		m, err := filepath.Glob(filepath.Join(repoRoot, pattern))
		if err != nil {
			t.Fatalf("glob %s: %v", pattern, err)
		}
		files = append(files, m...)
	}
	return files
}

// fencePattern matches a fenced code block; spanPattern an inline code
// span, which may run over a line break.
var (
	fencePattern = regexp.MustCompile("(?ms)^```[^\n]*\n(.*?)^```")
	spanPattern  = regexp.MustCompile("`([^`]+)`")
)

// codeCommands returns the commands written in a Markdown text: every line
// of a fenced block (continuation lines joined, comments cut) and every
// inline code span, each as its fields.
func codeCommands(text string) [][]string {
	var cmds [][]string
	add := func(line string) {
		if i := strings.Index(line, " #"); i >= 0 {
			line = line[:i]
		}
		if f := strings.Fields(line); len(f) > 0 {
			cmds = append(cmds, f)
		}
	}
	for _, m := range fencePattern.FindAllStringSubmatch(text, -1) {
		joined := strings.ReplaceAll(m[1], "\\\n", " ")
		for _, line := range strings.Split(joined, "\n") {
			add(line)
		}
	}
	for _, m := range spanPattern.FindAllStringSubmatch(fencePattern.ReplaceAllString(text, ""), -1) {
		add(strings.ReplaceAll(m[1], "\n", " "))
	}
	return cmds
}

// afterEnv drops leading VAR=value assignments and sudo from a command.
func afterEnv(f []string) []string {
	for len(f) > 0 && (f[0] == "sudo" || strings.Contains(f[0], "=") && !strings.HasPrefix(f[0], "-")) {
		f = f[1:]
	}
	return f
}

// makeTargetPattern matches a rule line of the Makefile: one or more
// target names, then a colon that is not part of ":=".
var makeTargetPattern = regexp.MustCompile(`^([A-Za-z0-9][A-Za-z0-9_.-]*(?:[ \t]+[A-Za-z0-9][A-Za-z0-9_.-]*)*)[ \t]*:([^=]|$)`)

// makeTargets returns the targets the Makefile defines.
func makeTargets(t *testing.T) map[string]bool {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot, "Makefile"))
	if err != nil {
		t.Fatalf("open Makefile: %v", err)
	}
	defer f.Close()
	targets := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m := makeTargetPattern.FindStringSubmatch(sc.Text()); m != nil {
			for _, name := range strings.Fields(m[1]) {
				targets[name] = true
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read Makefile: %v", err)
	}
	if !targets["test"] || !targets["lint"] {
		t.Fatalf("found no test or lint target in the Makefile (parser broken?): %v", targets)
	}
	return targets
}

// badMakeTargets returns a complaint for each `make X` in text whose
// target X is not in targets, and how many make commands it saw.
func badMakeTargets(text string, targets map[string]bool) (bad []string, seen int) {
	for _, cmd := range codeCommands(text) {
		cmd = afterEnv(cmd)
		if len(cmd) < 2 || cmd[0] != "make" {
			continue
		}
		for _, arg := range afterEnv(cmd[1:]) {
			if strings.HasPrefix(arg, "-") || strings.Contains(arg, "=") {
				continue
			}
			name := strings.TrimRight(arg, ",.;:)")
			if !targets[name] {
				bad = append(bad, fmt.Sprintf("`make %s`: the Makefile has no target %q", name, name))
			}
			seen++
			break // the first word that is not a variable is the target
		}
	}
	return bad, seen
}

// badDroverFlags returns a complaint for each --flag of a drover command
// in text that the command does not take, and how many flags it saw.
func badDroverFlags(root *cobra.Command, text string) (bad []string, seen int) {
	for _, cmd := range codeCommands(text) {
		cmd = afterEnv(cmd)
		if len(cmd) == 0 || (cmd[0] != "drover" && cmd[0] != "bin/drover") {
			continue
		}
		cmds := resolveCommands(root, cmd[1:])
		for _, arg := range cmd[1:] {
			name, ok := strings.CutPrefix(arg, "--")
			if !ok || name == "" {
				continue
			}
			name, _, _ = strings.Cut(name, "=")
			name = strings.TrimRight(name, ",.;:)")
			for _, c := range cmds {
				if !hasFlag(c, name) {
					bad = append(bad, fmt.Sprintf("`%s`: %q takes no flag --%s", strings.Join(cmd, " "), c.CommandPath(), name))
				}
			}
			seen++
		}
	}
	return bad, seen
}

func TestDocsNameOnlyMakeTargetsThatExist(t *testing.T) {
	targets := makeTargets(t)
	total := 0
	for _, path := range docFiles(t) {
		text, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("read %s: %v", path, err)
		}
		bad, seen := badMakeTargets(string(text), targets)
		for _, b := range bad {
			t.Errorf("%s: %s", path, b)
		}
		total += seen
	}
	if total == 0 {
		t.Fatal("no `make` command found in the docs (parser broken?)")
	}
	t.Logf("%d make commands checked", total)
}

func TestDocsNameOnlyDroverFlagsThatExist(t *testing.T) {
	root := newRootCmd()
	total := 0
	for _, path := range docFiles(t) {
		text, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("read %s: %v", path, err)
		}
		bad, seen := badDroverFlags(root, string(text))
		for _, b := range bad {
			t.Errorf("%s: %s", path, b)
		}
		total += seen
	}
	if total == 0 {
		t.Fatal("no drover flag found in the docs (parser broken?)")
	}
	t.Logf("%d drover flags checked", total)
}

// TestDocChecksCatchMistakes plants a wrong target and wrong flags in
// each form the docs use, so the checks above cannot pass by reading
// nothing.
func TestDocChecksCatchMistakes(t *testing.T) {
	text := "Run `make tset` or\n\n```\nDATA_DIR=x make no-such-target RUN_ARGS=y\nmake test\n" +
		"drover dev --data-dir d \\\n    --no-such-flag 1   # comment --not-a-flag\n```\n" +
		"and `drover snapshot create|ls --labl k=v`, `drover volume info --control\nx`, `drover replica --tls-*`.\n"
	bad, seen := badMakeTargets(text, map[string]bool{"test": true})
	if seen != 3 || len(bad) != 2 || !strings.Contains(bad[0], `"tset"`) && !strings.Contains(bad[1], `"tset"`) {
		t.Errorf("make check saw %d commands, complained %q; want 3 seen, tset and no-such-target refused", seen, bad)
	}
	bad, seen = badDroverFlags(newRootCmd(), text)
	want := []string{"--no-such-flag", `"drover snapshot create" takes no flag --labl`, `"drover snapshot ls" takes no flag --labl`}
	if seen != 5 || len(bad) != len(want) {
		t.Fatalf("flag check saw %d flags, complained %q; want 5 seen and %d complaints", seen, bad, len(want))
	}
	for i, w := range want {
		if !strings.Contains(bad[i], w) {
			t.Errorf("complaint %d is %q; want it to name %s", i, bad[i], w)
		}
	}
}

// resolveCommands walks the subcommand words of args from root. A word
// like "create|ls" names several subcommands; the walk stops at the first
// word that is not a subcommand of every command reached.
func resolveCommands(root *cobra.Command, args []string) []*cobra.Command {
	cmds := []*cobra.Command{root}
	for _, arg := range args {
		if strings.HasPrefix(arg, "-") {
			break
		}
		var next []*cobra.Command
		for _, c := range cmds {
			for _, word := range strings.Split(arg, "|") {
				sub := subcommand(c, word)
				if sub == nil {
					return cmds
				}
				next = append(next, sub)
			}
		}
		cmds = next
	}
	sort.Slice(cmds, func(i, j int) bool { return cmds[i].CommandPath() < cmds[j].CommandPath() })
	return cmds
}

// subcommand returns c's subcommand named word, or nil.
func subcommand(c *cobra.Command, word string) *cobra.Command {
	for _, sub := range c.Commands() {
		if sub.Name() == word || sub.HasAlias(word) {
			return sub
		}
	}
	return nil
}

// hasFlag reports whether c takes --name, its own or inherited. A name
// ending in "*" (`--tls-*`) stands for any flag with that prefix.
func hasFlag(c *cobra.Command, name string) bool {
	if name == "help" || c.DisableFlagParsing {
		return true
	}
	found := false
	visit := func(f *pflag.Flag) {
		if prefix, wild := strings.CutSuffix(name, "*"); wild && strings.HasPrefix(f.Name, prefix) || f.Name == name {
			found = true
		}
	}
	c.Flags().VisitAll(visit)
	c.InheritedFlags().VisitAll(visit)
	return found
}

// maxArchitectureLines keeps docs/ARCHITECTURE.md a statement of
// contracts: measurements go to docs/performance.md, weighed decisions to
// docs/decisions/, history to commit messages.
const maxArchitectureLines = 400

func TestArchitectureDocStaysShort(t *testing.T) {
	text, err := os.ReadFile(filepath.Join(repoRoot, "docs", "ARCHITECTURE.md"))
	if err != nil {
		t.Fatalf("read ARCHITECTURE.md: %v", err)
	}
	if n := strings.Count(string(text), "\n"); n > maxArchitectureLines {
		t.Errorf("docs/ARCHITECTURE.md has %d lines, more than %d: move measurements to docs/performance.md, "+
			"weighed alternatives to docs/decisions/, history to commit messages", n, maxArchitectureLines)
	}
}
