package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/asidecache/aside"
)

// inspect prints one entry as it is stored.
func inspect(ctx context.Context, e *env, args []string) error {
	fs := e.flags("inspect")
	version := fs.Int("version", 0, "the cache's version (default: the highest recorded in Redis)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return usagef("inspect: want CACHE KEY, got %d arguments", fs.NArg())
	}
	info, err := e.store.Inspect(ctx, fs.Arg(0), fs.Arg(1), *version)
	if err != nil {
		return failed("inspect", err)
	}
	if e.json {
		return e.printJSON(entryJSON(info))
	}
	w := e.out
	fmt.Fprintf(w, "cache     %s (version %d)\nkey       %s\nredis key %s\n", info.Cache, info.Version, info.Key, info.RedisKey)
	if info.Lease > 0 {
		fmt.Fprintf(w, "lease     held, %v left (a load under way)\n", info.Lease.Round(time.Millisecond))
	}
	if !info.Found {
		fmt.Fprintln(w, "entry     none")
		return nil
	}
	now := time.Now()
	fmt.Fprintf(w, "format    %02x, flags %s, type %08x\n", info.Format, orNone(strings.Join(info.Flags, ",")), info.TypeID)
	fmt.Fprintf(w, "created   %s (%v ago; its load took %v)\n", info.Created.Format(time.RFC3339Nano), now.Sub(info.Created).Round(time.Millisecond), info.LoadTime)
	fresh := "fresh"
	if !now.Before(info.FreshUntil) {
		fresh = "stale"
	}
	fmt.Fprintf(w, "fresh to  %s (%s)\nttl       %v\n", info.FreshUntil.Format(time.RFC3339Nano), fresh, info.TTL.Round(time.Millisecond))
	fmt.Fprintf(w, "size      %d bytes stored, payload %d bytes\n", info.Size, info.PayloadSize)
	for _, t := range info.Tags {
		fmt.Fprintf(w, "tag       %s: %s\n", t.Name, t.State)
	}
	if info.ValueError != "" {
		fmt.Fprintf(w, "value     (%s)\n", info.ValueError)
	} else if info.Value != nil {
		fmt.Fprintf(w, "value     %+v\n", info.Value)
	}
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// entryJSON is an entry as -json prints it: durations in milliseconds.
func entryJSON(info aside.EntryInfo) map[string]any {
	out := map[string]any{
		"cache": info.Cache, "version": info.Version, "key": info.Key, "redis_key": info.RedisKey,
		"found": info.Found, "lease_ms": info.Lease.Milliseconds(),
	}
	if !info.Found {
		return out
	}
	tags := make([]map[string]string, len(info.Tags))
	for i, t := range info.Tags {
		tags[i] = map[string]string{"name": t.Name, "state": t.State, "token": t.Token, "current": t.Current}
	}
	for k, v := range map[string]any{
		"flags": append([]string{}, info.Flags...), "format": fmt.Sprintf("%02x", info.Format), "type_id": fmt.Sprintf("%08x", info.TypeID),
		"created": info.Created, "fresh_until": info.FreshUntil, "load_ms": float64(info.LoadTime.Microseconds()) / 1000,
		"ttl_ms": info.TTL.Milliseconds(), "size": info.Size, "payload_size": info.PayloadSize, "tags": tags,
		"value": info.Value, "value_error": info.ValueError,
	} {
		out[k] = v
	}
	return out
}

// invalidate invalidates keys of a cache, or tags, through aside itself:
// leases revoked, every version in use, every running Store's L1 told.
func invalidate(ctx context.Context, e *env, args []string) error {
	fs := e.flags("invalidate")
	stale := fs.Bool("stale", false, "mark stale (served while refreshed) instead of deleting")
	tags := fs.Bool("tags", false, "the arguments are tags, not a cache and keys")
	if err := parse(fs, args); err != nil {
		return err
	}
	ch := aside.Change{Stale: *stale}
	switch {
	case *tags && fs.NArg() == 0:
		return usagef("invalidate -tags: want at least one TAG")
	case *tags:
		ch.Tags = fs.Args()
	case fs.NArg() < 2:
		return usagef("invalidate: want CACHE KEY... (or -tags TAG...), got %d arguments", fs.NArg())
	default:
		ch.Cache, ch.Keys = fs.Arg(0), fs.Args()[1:]
	}
	// ApplyRecorded: nothing is queued in this short-lived process; what
	// did not reach Redis is an error, and the operator runs it again.
	if err := e.store.ApplyRecorded(ctx, ch); err != nil {
		return failed("invalidate", err)
	}
	n := len(ch.Keys) + len(ch.Tags)
	if e.json {
		return e.printJSON(map[string]any{"invalidated": n, "cache": ch.Cache, "keys": ch.Keys, "tags": ch.Tags, "stale": ch.Stale})
	}
	what := "key"
	if *tags {
		what = "tag"
	}
	fmt.Fprintf(e.out, "%d %s(s) %s\n", n, what, map[bool]string{false: "invalidated", true: "marked stale"}[*stale])
	return nil
}

// purge deletes every entry of a cache.
func purge(ctx context.Context, e *env, args []string) error {
	fs := e.flags("purge")
	yes := fs.Bool("yes", false, "confirm: every entry of the cache is deleted")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("purge: want CACHE, got %d arguments", fs.NArg())
	}
	if !*yes {
		return usagef("purge deletes every entry of %q, in every version: pass -yes", fs.Arg(0))
	}
	n, err := e.store.Purge(ctx, fs.Arg(0))
	if err != nil {
		return failed("purge", err)
	}
	if e.json {
		return e.printJSON(map[string]any{"cache": fs.Arg(0), "deleted": n})
	}
	fmt.Fprintf(e.out, "%d keys deleted from %s\n", n, fs.Arg(0))
	return nil
}
