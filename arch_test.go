package aside_test

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImportsPointDown keeps the house's shape: production files import no
// test-only package, and no internal package imports the root (the
// compiler refuses the cycle only once the root imports that package).
func TestImportsPointDown(t *testing.T) {
	testOnly := []string{"golang.org/x/sync", "github.com/alicebob/miniredis", "go.uber.org/goleak", "testing"}
	files, _ := filepath.Glob("*.go")
	internal, _ := filepath.Glob("internal/*/*.go")
	if len(internal) == 0 {
		t.Fatal("no internal package found: run from the module's root")
	}
	for _, f := range append(files, internal...) {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		ast, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range ast.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			for _, p := range testOnly {
				if path == p || strings.HasPrefix(path, p+"/") {
					t.Errorf("%s imports %s, a test-only package", f, path)
				}
			}
			if strings.HasPrefix(f, "internal") && path == "github.com/asidecache/aside" {
				t.Errorf("%s imports the root package: internal packages take callbacks instead", f)
			}
		}
	}
}
