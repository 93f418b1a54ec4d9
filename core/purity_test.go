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

// forbiddenImports lists the packages no non-test file under core/ may
// import; see the package comment for why.
var forbiddenImports = map[string]bool{
	"time":         true,
	"os":           true,
	"net":          true,
	"sync":         true,
	"sync/atomic":  true,
	"math/rand":    true,
	"math/rand/v2": true,
	"io/ioutil":    true,
	"syscall":      true,
	"unsafe":       true,
}

// forbiddenImportPrefixes lists whole subtrees of the standard library that
// are forbidden (os/exec, os/signal, net/http, net/netip, ...).
var forbiddenImportPrefixes = []string{"os/", "net/"}

// isForbiddenImport reports whether importPath breaks the purity rule.
func isForbiddenImport(importPath string) bool {
	if forbiddenImports[importPath] {
		return true
	}
	for _, prefix := range forbiddenImportPrefixes {
		if strings.HasPrefix(importPath, prefix) {
			return true
		}
	}
	return false
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
		{"netx is not net", "package p\nimport _ \"example.com/netx\"\n", 0},
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
