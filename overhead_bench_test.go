package aside_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/asidecache/aside"
	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"
)

// BenchmarkHitOverhead is BenchmarkHit without the network: a go-redis
// hook answers each GET from memory, on the floor's client and on aside's
// alike, so that what is left is the client-side work — go-redis's command
// handling, the decode, and what aside adds to them. On loopback a round
// trip's system calls vary by more than aside's whole cost (the bench
// module's second floor measures up to 1.2× the first), so this is where
// that cost is measured.
func BenchmarkHitOverhead(b *testing.B) {
	ctx := context.Background()
	srv := miniredis.RunT(b)
	mem := &memoryGets{vals: map[string]string{}}
	run := func(b *testing.B, get func() error) {
		b.ReportAllocs()
		for b.Loop() {
			if err := get(); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("floor", func(b *testing.B) {
		rdb := newClient(b, srv.Addr())
		raw, _ := msgpack.Marshal(sampleUser)
		space, key := uniquePrefix()+":floor:", "hot" // a key built per call, as every caller builds one
		mem.vals[space+key] = string(raw)
		rdb.AddHook(mem)
		run(b, func() error {
			data, err := rdb.Get(ctx, space+key).Bytes()
			if err != nil {
				return err
			}
			var u benchUser
			return msgpack.Unmarshal(data, &u)
		})
	})
	b.Run("aside", func(b *testing.B) {
		rdb := newClient(b, srv.Addr())
		c := benchCacheOn(b, rdb)
		load := func(context.Context) (benchUser, error) { return sampleUser, nil }
		if _, err := c.Get(ctx, "hot", load); err != nil {
			b.Fatal(err)
		}
		if err := aside.StoreOf(c).Wait(ctx); err != nil {
			b.Fatal(err)
		}
		keys, _ := rdb.Keys(ctx, "*user*").Result()
		for _, k := range keys {
			if v, err := rdb.Get(ctx, k).Result(); err == nil {
				mem.vals[k] = v // the entry, as aside wrote it
			}
		}
		rdb.AddHook(mem)
		run(b, func() error {
			_, err := c.Get(ctx, "hot", load)
			return err
		})
		if s := c.Stats(); s.Hits < uint64(b.N) {
			b.Fatalf("%d hits for %d Gets", s.Hits, b.N)
		}
	})
}

// memoryGets answers GETs of the keys it holds without Redis.
type memoryGets struct{ vals map[string]string }

func (*memoryGets) DialHook(next redis.DialHook) redis.DialHook { return next }
func (*memoryGets) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (m *memoryGets) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if c, ok := cmd.(*redis.StringCmd); ok && cmd.Name() == "get" {
			if v, ok := m.vals[fmt.Sprint(cmd.Args()[1])]; ok {
				c.SetVal(v)
				return nil
			}
		}
		return next(ctx, cmd)
	}
}
