package main

// The batch table: 100 cached keys read at once, against the floor of the
// same reads by hand — one MGET on a node, one pipeline per master (per
// shard, the nodes in parallel) on a Cluster (a Ring), where an MGET cannot
// span nodes.

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/viccon/sturdyc"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/asidecache/aside"
)

func batch(ctx context.Context, title string, rdb redis.UniversalClient) {
	store, err := aside.NewStore(rdb, aside.WithPrefix(prefix+"batch"))
	must(err)
	defer store.Close()
	c, err := aside.New[user](store, "user")
	must(err)
	keys := make([]string, 100)
	for i := range keys {
		keys[i] = strconv.Itoa(i)
	}
	loadMany := func(_ context.Context, ks []string) (map[string]user, error) {
		out := make(map[string]user, len(ks))
		for _, k := range ks {
			out[k] = sample
		}
		return out, nil
	}
	_, err = c.GetMany(ctx, keys, loadMany)
	must(err)
	must(store.Wait(ctx)) // the fills have landed: what follows reads hits
	raw, _ := msgpack.Marshal(sample)
	rawKeys := make([]string, 100)
	for i := range rawKeys {
		rawKeys[i] = prefix + ":mget:" + keys[i]
		must(rdb.Set(ctx, rawKeys[i], raw, time.Minute).Err())
	}
	type row struct {
		name string
		fn   func() error
	}
	var rows []row
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		rows = append(rows, row{"floor: a pipeline of GETs per master by hand, in parallel, + 100 decodes", func() error {
			return perNodeByHand(ctx, rawKeys, func(k string) (*redis.Client, error) { return c.MasterForKey(ctx, k) })
		}})
	case *redis.Ring:
		rows = append(rows, row{"floor: a pipeline of GETs per shard by hand, in parallel, + 100 decodes", func() error {
			return perNodeByHand(ctx, rawKeys, c.GetShardClientForKey)
		}})
	default:
		rows = append(rows, row{"floor: MGET + 100 decodes", func() error {
			vals, err := rdb.MGet(ctx, rawKeys...).Result()
			return errors.Join(err, decodeAll(vals))
		}})
	}
	rows = append(rows,
		row{"aside GetMany", func() error { _, err := c.GetMany(ctx, keys, loadMany); return err }},
		row{"aside: 100 × Get", func() error {
			for _, k := range keys {
				if _, err := c.Get(ctx, k, func(context.Context) (user, error) { return sample, nil }); err != nil {
					return err
				}
			}
			return nil
		}})
	if _, ok := rdb.(*redis.Client); ok {
		sc := sturdyc.New[user](10_000, 16, time.Minute, 10)
		keyFn := sc.BatchKeyFn("user")
		_, _ = sc.GetOrFetchBatch(ctx, keys, keyFn, loadMany)
		rows = append(rows, row{"sturdyc GetOrFetchBatch (memory)", func() error {
			_, err := sc.GetOrFetchBatch(ctx, keys, keyFn, loadMany)
			return err
		}})
	}
	fmt.Println("## " + title)
	fmt.Println()
	fmt.Println("| subject | per 100 keys | allocs/op | × floor |")
	fmt.Println("|---|---|---|---|")
	var fns []func(b *testing.B)
	for _, r := range rows {
		fns = append(fns, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := r.fn(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	results := measureAll(fns)
	for i, r := range rows {
		fmt.Printf("| %s | %s | %d | %s |\n", r.name, dur(results[i].nsPerOp), results[i].allocs, ratio(results[i], results[0]))
	}
	fmt.Println()
}

// perNodeByHand reads keys as a careful hand-written client would on a
// Cluster or a Ring: grouped by node (nodeFor: a key's master, its shard),
// one pipeline of GETs per node, the nodes in parallel, then every value
// decoded.
func perNodeByHand(ctx context.Context, keys []string, nodeFor func(key string) (*redis.Client, error)) error {
	byNode := map[*redis.Client][]string{}
	for _, k := range keys {
		n, err := nodeFor(k)
		if err != nil {
			return err
		}
		byNode[n] = append(byNode[n], k)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for n, ks := range byNode {
		wg.Go(func() {
			p := n.Pipeline()
			cmds := make([]*redis.StringCmd, len(ks))
			for i, k := range ks {
				cmds[i] = p.Get(ctx, k)
			}
			_, err := p.Exec(ctx)
			vals := make([]any, len(cmds))
			for i, c := range cmds {
				vals[i] = c.Val()
			}
			err = errors.Join(err, decodeAll(vals))
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// decodeAll decodes every value read (a string; nil where missing).
func decodeAll(vals []any) error {
	var err error
	for _, v := range vals {
		var u user
		if s, ok := v.(string); ok {
			err = errors.Join(err, msgpack.Unmarshal([]byte(s), &u))
		}
	}
	return err
}
