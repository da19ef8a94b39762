package asidepg

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// readmePrelude declares what the README's asidepg snippets take as given.
const readmePrelude = `package main

import (
	"context"
	"errors"

	"github.com/asidecache/aside"
	"github.com/asidecache/aside/asidepg"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
)

var (
	ctx         = context.Background()
	id, locale  = "42", "en"
	pool, _     = pgxpool.New(ctx, "")
	store, _    = aside.NewStore(redis.NewClient(&redis.Options{ContextTimeoutEnabled: true}))
	products, _ = aside.New[int](store, "product")
	_           = errors.New
	_           pgx.Tx
	_           = asidepg.Migrate
)

func main() {}
`

// TestReadmeSnippetsCompile compiles the snippets of docs/durable.md that
// use this module (the core's test compiles the README's) as bodies of functions
// returning an error.
func TestReadmeSnippetsCompile(t *testing.T) {
	readme, err := os.ReadFile("../docs/durable.md")
	if err != nil {
		t.Fatal(err)
	}
	var src strings.Builder
	src.WriteString(readmePrelude)
	n := 0
	for _, s := range strings.Split(string(readme), "```go\n")[1:] {
		body, _, _ := strings.Cut(s, "\n```")
		if !strings.Contains(body, "asidepg.") {
			continue
		}
		n++
		var lines []string
		for _, l := range strings.Split(body, "\n") {
			if !strings.HasPrefix(l, "import ") {
				lines = append(lines, "\t"+l)
			}
		}
		fmt.Fprintf(&src, "\nfunc snippet%d() error {\n%s\n\treturn nil\n}\n", n, strings.Join(lines, "\n"))
	}
	if n == 0 {
		t.Fatal("docs/durable.md has no snippet using asidepg")
	}
	dir, err := os.MkdirTemp(".", "_readme")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(src.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("go", "build", "-o", os.DevNull, "./"+dir).CombinedOutput(); err != nil {
		t.Fatalf("README snippets do not compile:\n%s\n--- source:\n%s", out, src.String())
	}
}
