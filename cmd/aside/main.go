// Command aside is the operator's side of github.com/asidecache/aside: it
// inspects an entry, invalidates keys and tags, purges a cache and reports
// what each cache holds, speaking to Redis only — the application need not
// run, and a running one's L1 tiers hear the invalidations.
//
//	aside [-u URL] [-cluster | -sentinel MASTER] [-prefix P] [-json] [-timeout D] COMMAND ...
//
//	aside inspect [-version N] CACHE KEY     one entry, without loading it
//	aside invalidate [-stale] CACHE KEY...   keys, in every version of the cache
//	aside invalidate [-stale] -tags TAG...   tags, in every cache
//	aside purge -yes CACHE                   every entry of the cache
//	aside stats [-top N] [-sample N] [CACHE] entries, bytes, sizes, biggest (SCAN, never KEYS)
//
// URL is redis-cli's: redis://[user:password@]host:port[/db], rediss:// for
// TLS; several comma-separated hosts are a Cluster's seeds with -cluster,
// or Sentinels with -sentinel MASTER. Default: $ASIDE_URL, else
// redis://127.0.0.1:6379. Install with
// go install github.com/asidecache/aside/cmd/aside@latest.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/asidecache/aside"
	"github.com/redis/go-redis/v9"
)

func main() {
	redis.SetLogger(quietLogger{}) // its dial retries: the command reports the error once
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

// usageError is a command line that cannot run: exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return "aside: " + e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

const usage = `usage: aside [-u URL] [-cluster | -sentinel MASTER] [-prefix P] [-json] [-timeout D] COMMAND ...

  inspect [-version N] CACHE KEY       one entry, without loading it
  invalidate [-stale] CACHE KEY...     keys, in every version of the cache
  invalidate [-stale] -tags TAG...     tags, in every cache
  purge -yes CACHE                     every entry of the cache, every version
  stats [-top N] [-sample N] [CACHE]   entries, bytes, sizes and biggest entries per cache

Global flags:
`

// run is the command, with its exit status: 0, 1 (it failed) or 2 (a bad
// command line). Errors go to stderr prefixed "aside: ".
func run(args []string, stdout, stderr io.Writer) int {
	global := flag.NewFlagSet("aside", flag.ContinueOnError)
	global.SetOutput(stderr)
	global.Usage = func() { fmt.Fprint(stderr, usage); global.PrintDefaults() }
	defURL := os.Getenv("ASIDE_URL")
	if defURL == "" {
		defURL = "redis://127.0.0.1:6379"
	}
	var t target
	global.StringVar(&t.url, "u", defURL, "Redis `URL`: redis://[user:password@]host:port[/db], rediss:// for TLS; hosts comma-separated")
	global.BoolVar(&t.cluster, "cluster", false, "the hosts are Redis Cluster nodes")
	global.StringVar(&t.sentinel, "sentinel", "", "the hosts are Sentinels of `MASTER`")
	prefix := global.String("prefix", "aside", "the application's key prefix (aside.WithPrefix)")
	asJSON := global.Bool("json", false, "print JSON")
	global.DurationVar(&t.timeout, "timeout", 5*time.Second, "bound on each Redis call")
	if err := global.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if global.NArg() == 0 {
		global.Usage()
		return 2
	}
	if t.timeout <= 0 {
		fmt.Fprintln(stderr, "aside: -timeout must be positive")
		return 2
	}
	cmd, rest := global.Arg(0), global.Args()[1:]
	commands := map[string]func(ctx context.Context, e *env, args []string) error{
		"inspect": inspect, "invalidate": invalidate, "purge": purge, "stats": stats,
	}
	fn, ok := commands[cmd]
	if !ok {
		fmt.Fprintf(stderr, "aside: unknown command %q: want inspect, invalidate, purge or stats\n", cmd)
		return 2
	}
	rdb, err := t.connect()
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	defer rdb.Close()
	store, err := aside.NewStore(rdb, aside.WithPrefix(*prefix), aside.WithOpTimeout(t.timeout))
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	defer store.Close()
	e := &env{rdb: rdb, store: store, prefix: *prefix, json: *asJSON, out: stdout, errOut: stderr, timeout: t.timeout}
	if err := fn(context.Background(), e, rest); err != nil {
		fmt.Fprintln(stderr, err)
		if errors.As(err, new(usageError)) {
			return 2
		}
		return 1
	}
	return 0
}

// env is what every command works with.
type env struct {
	rdb     redis.UniversalClient
	store   *aside.Store
	prefix  string
	json    bool
	out     io.Writer
	errOut  io.Writer
	timeout time.Duration
}

// flags returns a command's flag set, which reports to stderr.
func (e *env) flags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("aside "+name, flag.ContinueOnError)
	fs.SetOutput(e.errOut)
	return fs
}

// parse parses a command's flags; a failure is a usage error (its message
// printed by the flag package).
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return usagef("%s: %v", strings.TrimPrefix(fs.Name(), "aside "), err)
	}
	return nil
}

func (e *env) printJSON(v any) error {
	enc := json.NewEncoder(e.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// failed words an error for an operator: "aside: WHAT: why".
func failed(what string, err error) error {
	return fmt.Errorf("aside: %s: %s", what, strings.TrimPrefix(err.Error(), "aside: "))
}
