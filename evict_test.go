package aside_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asidecache/aside"
)

type versioned struct {
	Version int64
	Pad     string // makes the data set outgrow maxmemory
}

// TestEvictionNeverServesStale runs a real redis-server with a 3 MB
// maxmemory and allkeys-lru — so tag keys and entries are evicted alike —
// fills it well past its limit while tags are invalidated, and checks that
// no read returns a value older than its tag's last invalidation, during
// the run and after it.
func TestEvictionNeverServesStale(t *testing.T) {
	requireLong(t)
	requireReal(t)
	srv, err := startRedis(0, "--maxmemory", "3mb", "--maxmemory-policy", "allkeys-lru", "--maxmemory-samples", "3")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.stop()
	rdb := newClient(t, srv.addr)
	store, err := aside.NewStore(rdb, aside.WithOpTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	c := newCache[versioned](t, store)
	const tags, keys = 40, 8000 // ~8000 × 1 KB: well past maxmemory
	var db, invalidated [tags]atomic.Int64
	pad := strings.Repeat("x", 1000)
	tagOf := func(k int) int { return k % tags }
	get := func(k int) (int64, error) {
		tg := tagOf(k)
		v, err := c.Get(bgCtx, fmt.Sprint(k), func(context.Context) (versioned, error) {
			return versioned{Version: db[tg].Load(), Pad: pad}, nil
		}, aside.Tags(fmt.Sprint("tag:", tg)))
		return v.Version, err
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var stale, reads atomic.Int64
	wg.Add(1)
	go func() { // writer
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			tg := rand.N(tags)
			v := db[tg].Add(1)
			if err := store.InvalidateTags(bgCtx, fmt.Sprint("tag:", tg)); err != nil {
				t.Error(err)
				return
			}
			invalidated[tg].Store(v) // one writer: versions only grow
			time.Sleep(500 * time.Microsecond)
		}
	}()
	for range 4 { // readers, filling the cache well past maxmemory
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				k := rand.N(keys)
				floor := invalidated[tagOf(k)].Load()
				v, err := get(k)
				if err != nil {
					t.Error(err)
					return
				}
				reads.Add(1)
				if v < floor {
					stale.Add(1)
				}
			}
		}()
	}
	time.Sleep(4 * time.Second)
	close(stop)
	waitGroup(t, &wg)
	var staleAfter int
	for k := range keys {
		if v, err := get(k); err != nil || v != db[tagOf(k)].Load() {
			staleAfter++
		}
	}
	info := rdb.Info(bgCtx, "stats").Val()
	evicted := "?"
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "evicted_keys:"); ok {
			evicted = v
		}
	}
	t.Logf("%d reads, %d stale during the run, %d stale after; Redis evicted %s keys", reads.Load(), stale.Load(), staleAfter, evicted)
	if stale.Load() != 0 || staleAfter != 0 {
		t.Errorf("%d stale reads during the run, %d after; want 0 and 0", stale.Load(), staleAfter)
	}
	if evicted == "0" || evicted == "?" {
		t.Errorf("Redis evicted %s keys: the test did not exercise eviction", evicted)
	}
}
