package core

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// allowedImports lists the only standard library packages a non-test
// file under core/ may import: pure computation, no clock, files,
// sockets, goroutines, randomness or process state (see the package
// comment). Everything else from outside core/ — the standard library's
// time, os, net, sync, log, runtime, crypto/rand, and every other module,
// Drover's transports included — is refused. An allowlist, so that a new
// kind of effect is refused until someone decides it is pure.
var allowedImports = map[string]bool{
	"bytes": true, "cmp": true, "container/heap": true, "container/list": true,
	"crypto/sha256": true, "encoding/binary": true, "encoding/hex": true,
	"errors": true, "fmt": true, "hash": true, "hash/crc32": true,
	"io":   true, // its interfaces and errors only: no file or socket behind them here
	"maps": true, "math": true, "math/bits": true, "slices": true, "sort": true,
	"strconv": true, "strings": true, "unicode": true, "unicode/utf8": true,
}

// corePrefix is the import path prefix of core's own packages.
const corePrefix = "github.com/drover-io/drover/core/"

// isForbiddenImport reports whether importPath breaks the purity rule.
func isForbiddenImport(importPath string) bool {
	return !allowedImports[importPath] && !strings.HasPrefix(importPath, corePrefix)
}

// purityViolations parses one Go source file and returns a description of
// every purity violation in it: each forbidden import and each go statement.
// It works on the syntax tree, so comments and strings cannot fool it.
func purityViolations(filename string, src []byte) ([]string, error) {
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
		if isForbiddenImport(importPath) {
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

// TestPurity enforces the purity rule on every non-test Go file under core/.
// Test files may do anything. Directories the go tool ignores (testdata and
// names starting with "." or "_") are skipped.
func TestPurity(t *testing.T) {
	checked := 0
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if path != "." && (name == "testdata" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_")) {
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
		violations, err := purityViolations(filepath.Join("core", path), src)
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
	// doc.go alone guarantees one file; zero means the walk itself broke.
	if checked == 0 {
		t.Fatalf("core purity: checked no files; the walk is broken")
	}
	t.Logf("core purity: checked %d files", checked)
}

// TestPurityViolationsCatchesBadSource proves the checker can fail: every
// impure snippet must be reported, every pure one must pass.
func TestPurityViolationsCatchesBadSource(t *testing.T) {
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
			got, err := purityViolations("snippet.go", []byte(tt.src))
			if err != nil {
				t.Fatalf("purityViolations: %v", err)
			}
			if len(got) != tt.want {
				t.Errorf("purityViolations found %d violations %q; want %d", len(got), got, tt.want)
			}
		})
	}
}
