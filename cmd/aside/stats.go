package main

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// cacheStats is what one cache holds in Redis.
type cacheStats struct {
	Cache    string           `json:"cache"`
	Entries  int64            `json:"entries"`
	Leases   int64            `json:"leases"`          // loads under way
	Versions map[string]int64 `json:"versions"`        // entries per version ("v2")
	Bytes    int64            `json:"bytes"`           // the entries' values (STRLEN), exact
	Sampled  int              `json:"memory_sampled"`  // entries measured with MEMORY USAGE
	Memory   int64            `json:"memory_estimate"` // their mean × Entries: Redis's memory, overhead included
	Sizes    []sizeBucket     `json:"size_histogram"`  // entries by stored size
	Biggest  []bigEntry       `json:"biggest"`         // the largest entries, largest first
	memSum   int64            // MEMORY USAGE of the sample
}

type sizeBucket struct {
	UpTo  int64 `json:"up_to"` // bytes, inclusive; 0 for the last bucket (larger)
	Count int64 `json:"count"`
}

type bigEntry struct {
	Key      string `json:"key"` // as stored between the braces (escaped or hashed when it had to be)
	Version  string `json:"version"`
	RedisKey string `json:"redis_key"`
	Bytes    int64  `json:"bytes"`
}

// statsReport is the whole answer of stats.
type statsReport struct {
	Prefix string        `json:"prefix"`
	Caches []*cacheStats `json:"caches"`
	Tags   int64         `json:"tag_keys"` // tag token keys, shared by every cache
	Nodes  int           `json:"nodes"`    // masters scanned
}

var bucketLimits = []int64{256, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20}

// stats scans every master with SCAN (never KEYS), measures each entry with
// STRLEN and a sample of each cache's with MEMORY USAGE.
func stats(ctx context.Context, e *env, args []string) error {
	fs := e.flags("stats")
	top := fs.Int("top", 5, "how many of the biggest entries to list per cache")
	sample := fs.Int("sample", 200, "entries per cache measured with MEMORY USAGE")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 1 {
		return usagef("stats: want at most one CACHE, got %d arguments", fs.NArg())
	}
	if *top < 0 || *sample < 0 {
		return usagef("stats: -top and -sample must not be negative")
	}
	only := fs.Arg(0)
	if only != "" && !validCache(only) {
		return usagef("stats: %q is not a cache name (1-64 letters, digits, '_', '-', '.')", only)
	}
	r := &statsReport{Prefix: e.prefix}
	byName := map[string]*cacheStats{}
	scan := func(ctx context.Context, node *redis.Client) error {
		r.Nodes++
		match := e.prefix + ":*"
		if only != "" {
			match = e.prefix + ":" + only + ":v*"
		}
		var cursor uint64
		for {
			sctx, cancel := context.WithTimeout(ctx, e.timeout)
			keys, next, err := node.Scan(sctx, cursor, match, 1000).Result()
			cancel()
			if err != nil {
				return err
			}
			if err := measure(ctx, e, node, keys, byName, r, *top, *sample); err != nil {
				return err
			}
			if cursor = next; cursor == 0 {
				return nil
			}
		}
	}
	var err error
	if c, ok := e.rdb.(*redis.ClusterClient); ok {
		// One master at a time: ForEachMaster calls in parallel, and the
		// report is not shared between goroutines.
		var mu sync.Mutex
		var masters []*redis.Client
		err = c.ForEachMaster(ctx, func(_ context.Context, node *redis.Client) error {
			mu.Lock()
			defer mu.Unlock()
			masters = append(masters, node)
			return nil
		})
		for _, m := range masters {
			if err == nil {
				err = scan(ctx, m)
			}
		}
	} else {
		err = scan(ctx, e.rdb.(*redis.Client))
	}
	if err != nil {
		return failed("stats", err)
	}
	for _, c := range byName {
		if c.Sampled > 0 {
			c.Memory = c.memSum / int64(c.Sampled) * c.Entries
		}
		r.Caches = append(r.Caches, c)
	}
	sort.Slice(r.Caches, func(i, j int) bool { return r.Caches[i].Bytes > r.Caches[j].Bytes })
	if e.json {
		return e.printJSON(r)
	}
	printStats(e, r)
	return nil
}

// measure adds one SCAN batch of a node to the report: one pipeline of
// STRLEN (and MEMORY USAGE for the sample).
func measure(ctx context.Context, e *env, node *redis.Client, keys []string, byName map[string]*cacheStats, r *statsReport, top, sample int) error {
	type measured struct {
		c       *cacheStats
		key, rk string
		version string
		strlen  *redis.IntCmd
		usage   *redis.IntCmd
	}
	var batch []measured
	pctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	_, err := node.Pipelined(pctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			name, version, user, lease, ok := classify(e.prefix, k)
			if !ok {
				if strings.HasPrefix(k, e.prefix+":#tag:") {
					r.Tags++
				}
				continue
			}
			c := byName[name]
			if c == nil {
				c = &cacheStats{Cache: name, Versions: map[string]int64{}}
				for _, l := range bucketLimits {
					c.Sizes = append(c.Sizes, sizeBucket{UpTo: l})
				}
				c.Sizes = append(c.Sizes, sizeBucket{})
				byName[name] = c
			}
			if lease {
				c.Leases++
				continue
			}
			m := measured{c: c, key: user, rk: k, version: version, strlen: p.StrLen(pctx, k)}
			if c.Sampled < sample {
				c.Sampled++
				m.usage = p.MemoryUsage(pctx, k)
			}
			batch = append(batch, m)
		}
		return nil
	})
	if err != nil && err != redis.Nil {
		return err
	}
	for _, m := range batch {
		n := m.strlen.Val()
		if n == 0 { // expired or deleted since the SCAN
			if m.usage != nil {
				m.c.Sampled--
			}
			continue
		}
		c := m.c
		c.Entries++
		c.Versions[m.version]++
		c.Bytes += n
		if m.usage != nil {
			c.memSum += m.usage.Val()
		}
		i := sort.Search(len(bucketLimits), func(i int) bool { return n <= bucketLimits[i] })
		c.Sizes[i].Count++
		if top > 0 && (len(c.Biggest) < top || n > c.Biggest[len(c.Biggest)-1].Bytes) {
			c.Biggest = append(c.Biggest, bigEntry{Key: m.key, Version: m.version, RedisKey: m.rk, Bytes: n})
			sort.SliceStable(c.Biggest, func(i, j int) bool { return c.Biggest[i].Bytes > c.Biggest[j].Bytes })
			if len(c.Biggest) > top {
				c.Biggest = c.Biggest[:top]
			}
		}
	}
	return nil
}

// classify splits a key of aside's: "prefix:cache:vN:{key}" (an entry) or
// "…}:l" (its lease). ok is false for every other key (tag tokens, version
// sets, the bus, another application's).
func classify(prefix, k string) (cache, version, key string, lease, ok bool) {
	rest, found := strings.CutPrefix(k, prefix+":")
	if !found || strings.HasPrefix(rest, "#") {
		return "", "", "", false, false
	}
	cache, rest, found = strings.Cut(rest, ":")
	if !found || !validCache(cache) {
		return "", "", "", false, false
	}
	version, rest, found = strings.Cut(rest, ":")
	if !found || len(version) < 2 || version[0] != 'v' || strings.Trim(version[1:], "0123456789") != "" {
		return "", "", "", false, false
	}
	if body, isLease := strings.CutSuffix(rest, ":l"); isLease && strings.HasPrefix(body, "{") && strings.HasSuffix(body, "}") {
		return cache, version, body[1 : len(body)-1], true, true
	}
	if !strings.HasPrefix(rest, "{") || !strings.HasSuffix(rest, "}") {
		return "", "", "", false, false
	}
	return cache, version, rest[1 : len(rest)-1], false, true
}

// validCache is aside's rule for a cache name.
func validCache(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-' || r == '.') {
			return false
		}
	}
	return true
}

func printStats(e *env, r *statsReport) {
	w := e.out
	fmt.Fprintf(w, "prefix %s, %d node(s) scanned, %d tag keys\n", r.Prefix, r.Nodes, r.Tags)
	if len(r.Caches) == 0 {
		fmt.Fprintln(w, "no entries")
		return
	}
	fmt.Fprintf(w, "%-20s %10s %8s %12s %14s  %s\n", "cache", "entries", "leases", "bytes", "memory (est.)", "versions")
	for _, c := range r.Caches {
		var vs []string
		for v, n := range c.Versions {
			vs = append(vs, fmt.Sprintf("%s:%d", v, n))
		}
		sort.Strings(vs)
		fmt.Fprintf(w, "%-20s %10d %8d %12s %14s  %s\n", c.Cache, c.Entries, c.Leases, human(c.Bytes), human(c.Memory), strings.Join(vs, " "))
		var hist []string
		for _, b := range c.Sizes {
			if b.Count == 0 {
				continue
			}
			label := "≤" + human(b.UpTo)
			if b.UpTo == 0 {
				label = ">" + human(bucketLimits[len(bucketLimits)-1])
			}
			hist = append(hist, fmt.Sprintf("%s %d", label, b.Count))
		}
		if len(hist) > 0 {
			fmt.Fprintf(w, "  sizes:   %s\n", strings.Join(hist, " | "))
		}
		for _, b := range c.Biggest {
			fmt.Fprintf(w, "  biggest: %s (%s) %s\n", b.Key, b.Version, human(b.Bytes))
		}
	}
}

func human(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
