// Package drover_test states the dependency rule of the whole tree as a
// test: which layer may import which, and that the core stays pure. It
// holds no code; the rule lives here, at the root, because it is about
// the tree and not about any one layer.
package drover_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// module is the import path of the module; every other path in this file
// is relative to it.
const module = "github.com/drover-io/drover"

// coreStdlib lists the only standard library packages a non-test file
// under core/ may import: pure computation, no clock, files, sockets,
// goroutines, randomness or process state. Everything else from outside
// core/ — the standard library's time, os, net, sync, log, runtime,
// crypto/rand, and every other module, Drover's transports included — is
// refused. An allowlist, so that a new kind of effect is refused until
// someone decides it is pure. Only direct imports count: fmt itself uses
// os, but core calling fmt.Errorf touches no file.
var coreStdlib = map[string]bool{
	"bytes": true, "cmp": true, "container/heap": true, "container/list": true,
	"crypto/sha256": true, "encoding/binary": true, "encoding/hex": true,
	"errors": true, "fmt": true, "hash": true, "hash/crc32": true,
	"io":   true, // its interfaces and errors only: no file or socket behind them here
	"maps": true, "math": true, "math/bits": true, "slices": true, "sort": true,
	"strconv": true, "strings": true, "unicode": true, "unicode/utf8": true,
}

// A layer is one top-level directory of the fixed layout and what its
// packages may depend on. Dependencies point down: core at the bottom,
// cmd on top.
type layer struct {
	// internal lists the Drover packages the layer may depend on,
	// directly or through others: "x/..." is x and everything under it,
	// anything else one package. Transports' dependencies on each other
	// follow transportTiers instead.
	internal []string
	// external lists the other modules' package path prefixes it may
	// import directly; nil means any (Kubernetes' excepted where
	// noKubernetes is set), empty means none.
	external []string
	// noKubernetes refuses k8s.io and sigs.k8s.io.
	noKubernetes bool
	// stdlib, when set, is the only standard library it may import.
	stdlib map[string]bool
}

var porcupine = "github.com/anishathalye/porcupine"

// layers is the dependency rule (docs/ARCHITECTURE.md's layout table).
var layers = map[string]layer{
	// core is the pure state machines: nothing but itself and coreStdlib.
	"core": {internal: []string{"core/..."}, external: []string{}, stdlib: coreStdlib},
	// model is the reference the checkers hold the core to; an oracle
	// that shares code with what it checks shares its bugs, so it
	// imports no Drover package at all.
	"model": {internal: []string{"model/..."}, external: []string{porcupine}},
	// sim drives the core under a virtual clock and checks it against
	// model.
	"sim": {internal: []string{"core/...", "model/...", "sim/..."}, external: []string{porcupine}},
	// transports do the real IO for the core; they run on plain hosts,
	// so never Kubernetes. Among themselves they follow transportTiers.
	"transports": {internal: []string{"core/..."}, noKubernetes: true},
	// frontends present a volume to hosts through the device interface
	// and know nothing of engines, replicas or wires. A protocol
	// library a frontend speaks would be listed in external.
	"frontends": {internal: []string{"core/...", "transports/device"}, external: []string{}},
	// k8s, fuzz and cmd sit on top. fuzz may reach anything below cmd;
	// k8s has no use for the simulator or the models.
	"k8s":  {internal: []string{"core/...", "transports/...", "frontends/...", "k8s/..."}},
	"fuzz": {internal: []string{"core/...", "model/...", "sim/...", "transports/...", "frontends/...", "k8s/...", "fuzz/..."}},
	"cmd":  {internal: []string{"core/...", "model/...", "sim/...", "transports/...", "frontends/...", "k8s/...", "cmd/..."}},
}

// transportTiers orders the transports packages, lowest first: a
// transport may depend only on transports of a lower tier. Every package
// under transports/ must appear, so a new one gets its place decided.
var transportTiers = [][]string{
	// Interfaces and primitives every other transport may use: the
	// block-device interface frontends serve (implemented by enginerun),
	// pooled buffers, the engine→replica link, credentials and test
	// helpers.
	{"transports/device", "transports/bufpool", "transports/link", "transports/certs",
		"transports/peercred", "transports/keyfile", "transports/testenv"},
	// Stores and wires: a replica's files, object stores, the TCP data
	// path (which serves a tcp.Replica, not a replica driver).
	{"transports/filestore", "transports/objstore", "transports/objstore/s3test", "transports/tcp"},
	// Drivers that run a core state machine on real IO.
	{"transports/replicarun", "transports/enginerun", "transports/backingimage", "transports/backuprun"},
	// A replica in a directory: filestore under replicarun.
	{"transports/replicadir"},
	// The control API's schema: only the control service and what sits
	// above it speak it, not the drivers it controls.
	{"transports/control/controlpb"},
	// Services over drivers.
	{"transports/control", "transports/metrics"},
	// The web console, over the control API and metrics.
	{"transports/console"},
}

// pkg is one package as the check sees it, non-test files only: test
// files may import anything below cmd, since tests assemble real stacks
// (a frontend's tests run a real engine on real replicas).
type pkg struct {
	// Path is relative to module ("core/engine").
	Path string
	// Imports are the direct imports and Deps the transitive ones, as
	// full import paths.
	Imports, Deps []string
}

// topDir returns the first element of a module-relative path.
func topDir(rel string) string {
	top, _, _ := strings.Cut(rel, "/")
	return top
}

// matches reports whether rel is named by pattern ("x/..." or exact).
func matches(pattern, rel string) bool {
	if base, ok := strings.CutSuffix(pattern, "/..."); ok {
		return rel == base || strings.HasPrefix(rel, base+"/")
	}
	return rel == pattern
}

// tierOf returns a transports package's tier, or -1 if it has none.
func tierOf(rel string) int {
	for i, tier := range transportTiers {
		if slices.Contains(tier, rel) {
			return i
		}
	}
	return -1
}

// internalAllowed reports whether Drover package from may depend on
// Drover package to (both module-relative), and if not, why.
func internalAllowed(from, to string) (bool, string) {
	l := layers[topDir(from)]
	for _, p := range l.internal {
		if matches(p, to) {
			return true, ""
		}
	}
	if topDir(from) == "transports" && topDir(to) == "transports" {
		ft, tt := tierOf(from), tierOf(to)
		if ft >= 0 && tt >= 0 && tt < ft {
			return true, ""
		}
		return false, fmt.Sprintf("transports tier %d may not depend on tier %d (transportTiers)", ft, tt)
	}
	return false, fmt.Sprintf("%s/ may depend only on %s", topDir(from), strings.Join(l.internal, ", "))
}

// isStdlib reports whether an import path is the standard library's:
// its first element has no dot.
func isStdlib(path string) bool {
	return !strings.Contains(topDir(path), ".")
}

// externalAllowed reports whether a package of layer l may import path of
// another module.
func externalAllowed(l layer, path string) bool {
	if l.noKubernetes && (strings.HasPrefix(path, "k8s.io/") || strings.HasPrefix(path, "sigs.k8s.io/")) {
		return false
	}
	if l.external == nil {
		return true
	}
	for _, p := range l.external {
		if path == p || strings.HasPrefix(path, p+"/") {
			return true
		}
	}
	return false
}

// layeringViolations checks pkgs against the rule and describes every
// violation: a package outside the fixed layout or without a transport
// tier, a Drover dependency (direct or transitive) against the layer
// order, a standard library import core may not make, a module a layer
// may not import.
func layeringViolations(pkgs []pkg) []string {
	var out []string
	for _, p := range pkgs {
		if p.Path == "" {
			continue // this package: test files only
		}
		l, ok := layers[topDir(p.Path)]
		if !ok {
			out = append(out, fmt.Sprintf("%s: not in the fixed top-level layout", p.Path))
			continue
		}
		if topDir(p.Path) == "transports" && tierOf(p.Path) < 0 {
			out = append(out, fmt.Sprintf("%s: has no place in transportTiers", p.Path))
		}
		for _, dep := range p.Deps {
			rel, ok := strings.CutPrefix(dep, module+"/")
			if !ok {
				continue
			}
			if ok, why := internalAllowed(p.Path, rel); !ok {
				via := "imports"
				if !slices.Contains(p.Imports, dep) {
					via = "depends (indirectly) on"
				}
				out = append(out, fmt.Sprintf("%s %s %s: %s", p.Path, via, rel, why))
			}
		}
		for _, imp := range p.Imports {
			switch {
			case strings.HasPrefix(imp, module+"/") || imp == module:
			case isStdlib(imp):
				if l.stdlib != nil && !l.stdlib[imp] {
					out = append(out, fmt.Sprintf("%s imports %s: not on %s/'s standard library allowlist", p.Path, imp, topDir(p.Path)))
				}
			case !externalAllowed(l, imp):
				out = append(out, fmt.Sprintf("%s imports %s: another module %s/ may not use", p.Path, imp, topDir(p.Path)))
			}
		}
	}
	return out
}

// listPackages runs go list over the module: every package's non-test
// direct and transitive imports.
func listPackages(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-json=ImportPath,Imports,Deps", "./...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.Bytes())
	}
	var pkgs []pkg
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p struct {
			ImportPath    string
			Imports, Deps []string
		}
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("go list output: %v", err)
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")
		pkgs = append(pkgs, pkg{Path: rel, Imports: p.Imports, Deps: p.Deps})
	}
	return pkgs
}

// TestLayering holds every package of the tree to the dependency rule.
func TestLayering(t *testing.T) {
	pkgs := listPackages(t)
	for _, v := range layeringViolations(pkgs) {
		t.Errorf("layering: %s", v)
	}
	// The check must have seen the tree, not an empty list: every layer
	// and every transport tier has packages.
	seen := map[string]bool{}
	for _, p := range pkgs {
		seen[topDir(p.Path)] = true
		seen[p.Path] = true
	}
	for name := range layers {
		if !seen[name] {
			t.Errorf("layering: no package under %s/; go list saw %d packages", name, len(pkgs))
		}
	}
	for _, tier := range transportTiers {
		for _, name := range tier {
			if !seen[name] {
				t.Errorf("layering: transportTiers names %s, which does not exist", name)
			}
		}
	}
	t.Logf("layering: checked %d packages", len(pkgs))
}

// TestLayeringCatchesWrongWayImports proves the check can fail: each
// wrong-way import the tree once had, and each kind of impurity, planted
// in a synthetic package list, is reported; the same packages with the
// imports pointing the right way pass.
func TestLayeringCatchesWrongWayImports(t *testing.T) {
	// d makes import paths: Drover's from paths relative to the module.
	d := func(rels ...string) []string {
		var out []string
		for _, r := range rels {
			if _, drover := layers[topDir(r)]; drover {
				r = module + "/" + r
			}
			out = append(out, r)
		}
		return out
	}
	// direct makes a package whose imports are its deps.
	direct := func(path string, imports ...string) pkg {
		return pkg{Path: path, Imports: d(imports...), Deps: d(imports...)}
	}
	tests := []struct {
		name string
		pkg  pkg
		want int
	}{
		// Right-way imports.
		{"engine on proto", direct("core/engine", "core/proto", "fmt", "hash/crc32"), 0},
		{"enginerun on device", direct("transports/enginerun", "transports/device", "transports/link", "core/engine", "sync"), 0},
		{"tcp on link", direct("transports/tcp", "transports/link", "transports/bufpool", "core/proto", "net"), 0},
		{"control on backuprun", direct("transports/control", "transports/backuprun", "transports/control/controlpb", "google.golang.org/grpc"), 0},
		{"nbd on device", direct("frontends/nbd", "transports/device", "core/proto", "net"), 0},
		{"bench under cmd", direct("cmd/drover/internal/bench", "transports/enginerun", "transports/replicadir", "transports/tcp", "frontends/nbd"), 0},
		{"sim on core and model", direct("sim", "core/engine", "model", "github.com/anishathalye/porcupine", "os"), 0},
		{"fuzz on k8s", direct("fuzz", "k8s/volumekey", "frontends/iscsi"), 0},

		// The wrong-way imports the tree had.
		{"enginerun on frontends/device", direct("transports/enginerun", "frontends/device"), 1},
		{"control on frontends/device", direct("transports/control", "frontends/device"), 1},
		{"tcp on replicarun", direct("transports/tcp", "transports/replicarun"), 1},
		{"backuprun on controlpb", direct("transports/backuprun", "transports/control/controlpb"), 1},
		{"bench harness in a frontend", direct("frontends/nbd/nbdbench",
			"transports/enginerun", "transports/filestore", "transports/replicarun", "transports/tcp", "transports/certs", "frontends/nbd"), 6},
		// The planted impurity the old denylist let through.
		{"core importing a transport and effects", direct("core/engine",
			"transports/filestore", "crypto/rand", "runtime", "log"), 4},

		// Other ways to break the rule.
		{"core on another module", direct("core/replica", "golang.org/x/sys/unix"), 1},
		{"core on time", direct("core/replica", "time", "sync"), 2},
		{"model on core", direct("model", "core/proto"), 1},
		{"sim on transports", direct("sim", "transports/filestore"), 1},
		{"frontend on another frontend", direct("frontends/iscsi", "frontends/nbd"), 1},
		{"frontend on enginerun", direct("frontends/nbd", "transports/enginerun"), 1},
		{"frontend on a new module", direct("frontends/nbd", "example.com/nbdlib"), 1},
		{"transport on Kubernetes", direct("transports/control", "sigs.k8s.io/controller-runtime"), 1},
		{"transport on a frontend", direct("transports/metrics", "frontends/nbd"), 1},
		{"transport on k8s", direct("transports/console", "k8s/api/v1alpha1"), 1},
		{"k8s on cmd", direct("k8s/agent", "cmd/drover/internal/bench"), 1},
		{"k8s on sim", direct("k8s/manager", "sim"), 1},
		{"fuzz on cmd", direct("fuzz", "cmd/drover/internal/bench"), 1},
		{"unlisted transport", direct("transports/newthing", "core/proto"), 1},
		{"new top-level dir", direct("util", "fmt"), 1},
		{"frontend through device's deps", pkg{Path: "frontends/nbd",
			Imports: d("transports/device"), Deps: d("transports/device", "transports/link")}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := layeringViolations([]pkg{tt.pkg})
			if len(got) != tt.want {
				t.Errorf("layeringViolations found %d violations %q; want %d", len(got), got, tt.want)
			}
		})
	}
}

// corePurityViolations parses one Go source file of core/ and describes
// every purity violation in it: each import outside core's own packages
// and coreStdlib, and each go statement. Unlike go list it sees files of
// every platform and build tag, and statements, not just imports; it
// works on the syntax tree, so comments and strings cannot fool it.
func corePurityViolations(filename string, src []byte) ([]string, error) {
	fset := token.NewFileSet()
	file, err := parser.ParseFile(fset, filename, src, parser.SkipObjectResolution)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", filename, err)
	}
	var violations []string
	for _, spec := range file.Imports {
		importPath, err := strconv.Unquote(spec.Path.Value)
		if err != nil {
			return nil, fmt.Errorf("parse %s: import path %s: %w", filename, spec.Path.Value, err)
		}
		if !coreStdlib[importPath] && !strings.HasPrefix(importPath, module+"/core/") {
			violations = append(violations, fmt.Sprintf("%s: imports %q", fset.Position(spec.Pos()), importPath))
		}
	}
	ast.Inspect(file, func(n ast.Node) bool {
		if stmt, ok := n.(*ast.GoStmt); ok {
			violations = append(violations, fmt.Sprintf("%s: starts a goroutine", fset.Position(stmt.Pos())))
		}
		return true
	})
	return violations, nil
}

// TestCorePurity holds every non-test Go file under core/ to
// corePurityViolations. Test files may do anything. Directories the go
// tool ignores (testdata and names starting with "." or "_") are skipped.
func TestCorePurity(t *testing.T) {
	checked := 0
	err := filepath.WalkDir("core", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if path != "core" && (name == "testdata" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_")) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
		violations, err := corePurityViolations(path, src)
		if err != nil {
			return err
		}
		for _, v := range violations {
			t.Errorf("core purity: %s", v)
		}
		checked++
		return nil
	})
	if err != nil {
		t.Fatalf("walk core/: %v", err)
	}
	// core/doc.go alone guarantees one file; zero means the walk broke.
	if checked == 0 {
		t.Fatalf("core purity: checked no files; the walk is broken")
	}
	t.Logf("core purity: checked %d files", checked)
}

// TestCorePurityCatchesBadSource proves the source check can fail: every
// impure snippet must be reported, every pure one must pass.
func TestCorePurityCatchesBadSource(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want int
	}{
		{"pure", "package p\nimport \"fmt\"\nfunc f() { fmt.Println() }\n", 0},
		{"time", "package p\nimport \"time\"\nvar _ = time.Now\n", 1},
		{"renamed os", "package p\nimport xos \"os\"\nvar _ = xos.Exit\n", 1},
		{"os subpackage", "package p\nimport \"os/exec\"\nvar _ = exec.Command\n", 1},
		{"net subpackage", "package p\nimport \"net/netip\"\nvar _ netip.Addr\n", 1},
		{"sync/atomic", "package p\nimport \"sync/atomic\"\nvar _ atomic.Int64\n", 1},
		{"math/rand/v2", "package p\nimport _ \"math/rand/v2\"\n", 1},
		{"unsafe", "package p\nimport \"unsafe\"\nvar _ = unsafe.Sizeof(0)\n", 1},
		{"two imports", "package p\nimport (\n\t\"sync\"\n\t\"syscall\"\n)\n", 2},
		{"go statement", "package p\nfunc f() {}\nfunc g() { go f() }\n", 1},
		{"go in closure", "package p\nvar h = func() { go func() {}() }\n", 1},
		{"words in comments", "package p\n// import \"time\"; go f()\nvar s = `go f()`\n", 0},
		{"another module", "package p\nimport _ \"example.com/netx\"\n", 1},
		{"a transport", "package p\nimport _ \"github.com/drover-io/drover/transports/filestore\"\n", 1},
		{"crypto/rand", "package p\nimport _ \"crypto/rand\"\n", 1},
		{"log and runtime", "package p\nimport (\n\t_ \"log\"\n\t_ \"runtime\"\n)\n", 2},
		{"core's own", "package p\nimport _ \"github.com/drover-io/drover/core/proto\"\n", 0},
		{"drover outside core", "package p\nimport _ \"github.com/drover-io/drover/coreish\"\n", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := corePurityViolations("snippet.go", []byte(tt.src))
			if err != nil {
				t.Fatalf("corePurityViolations: %v", err)
			}
			if len(got) != tt.want {
				t.Errorf("corePurityViolations found %d violations %q; want %d", len(got), got, tt.want)
			}
		})
	}
}
