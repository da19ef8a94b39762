package aside_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/asidecache/aside"
)

// readmePrelude declares what the README's snippets take as given: a
// context, a product id and locale, the Product type and its repository.
const readmePrelude = `package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/asidecache/aside"
	"github.com/redis/go-redis/v9"
)

var (
	ctx        = context.Background()
	id, locale = "42", "en"
	repo       productRepo
	rdb        = redis.NewClient(&redis.Options{ContextTimeoutEnabled: true})
	store, _   = aside.NewStore(rdb)
	errNoSuchProduct = errors.New("no such product")
	_          = errors.New
	_          = fmt.Sprint
	_          time.Duration
	_          redis.UniversalClient
)

type Product struct {
	ID, Locale, Name, Category string
	Cents                      int64
}

type productRepo struct{}

func (productRepo) Product(ctx context.Context, id, locale string) (Product, error) {
	return Product{ID: id, Locale: locale}, nil
}

func (productRepo) Products(ctx context.Context, ids []string) (map[string]Product, error) {
	return map[string]Product{}, nil
}

func (productRepo) UpdatePrice(ctx context.Context, id string, cents int64) (Product, error) {
	return Product{ID: id, Cents: cents}, nil
}

func main() {}
`

// TestReadmeSnippetsCompile compiles every Go snippet of the README as the
// body of a function returning an error, so that a snippet users copy
// builds as written, declares nothing it does not use — and so cannot drop
// an error it assigned. The asidepg module's snippets are compiled by its
// own test (asidepg/readme_test.go).
func TestReadmeSnippetsCompile(t *testing.T) {
	requireLong(t)
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	snippets := goSnippets(string(readme))
	if len(snippets) == 0 {
		t.Fatal("no Go snippet found in README.md")
	}
	var src strings.Builder
	src.WriteString(readmePrelude)
	for i, s := range snippets {
		fmt.Fprintf(&src, "\nfunc snippet%d() error {\n%s\n\treturn nil\n}\n", i+1, s)
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go tool is needed to compile the README's snippets: %v", err)
	}
	// Under the module, so that it builds against this checkout; '_' keeps
	// it out of ./... should a killed run leave it behind.
	dir, err := os.MkdirTemp(".", "_readme")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(src.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(goTool, "build", "-o", os.DevNull, "./"+dir).CombinedOutput()
	if err != nil {
		t.Fatalf("README snippets do not compile:\n%s\n--- source:\n%s", out, numbered(src.String()))
	}
}

// TestProfileTableMatchesBuiltins keeps the README's table of built-in
// profiles true to the code.
func TestProfileTableMatchesBuiltins(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	section := string(readme)
	start := strings.Index(section, "## Profiles")
	if start < 0 {
		t.Fatal("README has no Profiles section")
	}
	section = section[start:]
	names := []string{aside.Default, aside.Transactional, aside.Analytical, aside.Master}
	rows := map[string]func(p aside.Profile) string{
		"TTL (fresh)":                 func(p aside.Profile) string { return p.TTL.String() },
		"Jitter":                      func(p aside.Profile) string { return p.Jitter.String() },
		"StaleWindow":                 func(p aside.Profile) string { return p.StaleWindow.String() },
		"NegativeTTL":                 func(p aside.Profile) string { return p.NegativeTTL.String() },
		"EarlyRefresh (β)":            func(p aside.Profile) string { return fmt.Sprint(p.EarlyRefresh) },
		"LoadTimeout":                 func(p aside.Profile) string { return p.LoadTimeout.String() },
		"WaitBudget (0: LoadTimeout)": func(p aside.Profile) string { return p.WaitBudget.String() },
		"CompressAbove (bytes)":       func(p aside.Profile) string { return fmt.Sprint(p.CompressAbove) },
		"MaxEntryBytes":               func(p aside.Profile) string { return fmt.Sprint(p.MaxEntryBytes) },
	}
	for label, field := range rows {
		want := "| " + label + " |"
		for _, n := range names {
			p, err := aside.BuiltinProfile(n)
			if err != nil {
				t.Fatal(err)
			}
			want += " " + field(p) + " |"
		}
		if !strings.Contains(section, want+"\n") {
			t.Errorf("README's profile table lacks the row\n%s", want)
		}
	}
	if _, err := aside.BuiltinProfile("nope"); err == nil || !strings.Contains(err.Error(), `aside: no built-in profile "nope"`) {
		t.Errorf("BuiltinProfile(nope) = %v", err)
	}
}

// goSnippets returns the bodies of the README's ```go blocks, without their
// import lines (the prelude imports what they name).
func goSnippets(md string) []string {
	var out []string
	var cur []string
	in, inImport := false, false
	for _, line := range strings.Split(md, "\n") {
		switch {
		case !in && strings.TrimSpace(line) == "```go":
			in, cur = true, nil
		case in && strings.TrimSpace(line) == "```":
			in = false
			if snippet := strings.Join(cur, "\n"); !strings.Contains(snippet, "asidepg.") {
				out = append(out, snippet)
			}
		case in && strings.HasPrefix(line, "import ("):
			inImport = true
		case in && inImport:
			inImport = strings.TrimSpace(line) != ")"
		case in && strings.HasPrefix(line, "import "):
		case in:
			cur = append(cur, "\t"+line)
		}
	}
	return out
}

func numbered(src string) string {
	lines := strings.Split(src, "\n")
	for i := range lines {
		lines[i] = fmt.Sprintf("%4d  %s", i+1, lines[i])
	}
	return strings.Join(lines, "\n")
}
