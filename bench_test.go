package aside_test

import (
	"context"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/asidecache/aside"
)

// benchUser encodes to about 1 KB of msgpack.
type benchUser struct {
	ID        int64
	Name      string
	Email     string
	Bio       string
	Interests []string
	Score     float64
	Created   time.Time
}

var sampleUser = benchUser{
	ID: 123456, Name: "Ada Lovelace", Email: "ada@example.com",
	Bio:       strings.Repeat("Analyst, metaphysician, founder of scientific computing. ", 14),
	Interests: []string{"mathematics", "poetry", "engines", "music", "horses"},
	Score:     98.6, Created: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
}

// benchAddr is the real Redis when one is available (absolute numbers),
// else an in-process miniredis (relative numbers only).
func benchAddr(b *testing.B) string {
	if realAddr != "" {
		return realAddr
	}
	srv := miniredis.RunT(b)
	return srv.Addr()
}

func newBenchCache(b *testing.B, addr string) *aside.Cache[benchUser] {
	b.Helper()
	rdb := newClient(b, addr)
	store, err := aside.NewStore(rdb, aside.WithPrefix(uniquePrefix()))
	if err != nil {
		b.Fatal(err)
	}
	c, err := aside.New[benchUser](store, "user")
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// BenchmarkHit compares a cache hit with the floor: a hand-written go-redis
// GET plus msgpack decode, with no protection at all. Both run in one
// process against one Redis, so their ratio is meaningful on a noisy machine.
func BenchmarkHit(b *testing.B) {
	addr := benchAddr(b)
	ctx := context.Background()
	b.Run("floor", func(b *testing.B) {
		rdb := newClient(b, addr)
		key := uniquePrefix() + ":floor"
		raw, _ := msgpack.Marshal(sampleUser)
		rdb.Set(ctx, key, raw, time.Hour)
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			data, err := rdb.Get(ctx, key).Bytes()
			if err != nil {
				b.Fatal(err)
			}
			var u benchUser
			if err := msgpack.Unmarshal(data, &u); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("aside", func(b *testing.B) {
		c := newBenchCache(b, addr)
		load := func(context.Context) (benchUser, error) { return sampleUser, nil }
		if _, err := c.Get(ctx, "hot", load); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			if _, err := c.Get(ctx, "hot", load); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkParallelHit measures hit throughput with every core busy.
func BenchmarkParallelHit(b *testing.B) {
	addr := benchAddr(b)
	ctx := context.Background()
	b.Run("floor", func(b *testing.B) {
		rdb := newClient(b, addr)
		key := uniquePrefix() + ":floor"
		raw, _ := msgpack.Marshal(sampleUser)
		rdb.Set(ctx, key, raw, time.Hour)
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				data, err := rdb.Get(ctx, key).Bytes()
				var u benchUser
				if err == nil {
					err = msgpack.Unmarshal(data, &u)
				}
				if err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("aside", func(b *testing.B) {
		c := newBenchCache(b, addr)
		load := func(context.Context) (benchUser, error) { return sampleUser, nil }
		if _, err := c.Get(ctx, "hot", load); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := c.Get(ctx, "hot", load); err != nil {
					b.Error(err) // not Fatal: this goroutine is not the benchmark's
					return
				}
			}
		})
	})
}

// BenchmarkMiss measures a miss with an instant loader: the read, the load
// and the fill. The floor is GET (nil) + SET of the encoded value.
func BenchmarkMiss(b *testing.B) {
	addr := benchAddr(b)
	ctx := context.Background()
	b.Run("floor", func(b *testing.B) {
		rdb := newClient(b, addr)
		prefix := uniquePrefix() + ":floor:"
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			i++
			key := prefix + strconv.Itoa(i)
			if err := rdb.Get(ctx, key).Err(); err == nil {
				b.Fatal("unexpected hit")
			}
			raw, _ := msgpack.Marshal(sampleUser)
			if err := rdb.Set(ctx, key, raw, time.Minute).Err(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("aside", func(b *testing.B) {
		c := newBenchCache(b, addr)
		load := func(context.Context) (benchUser, error) { return sampleUser, nil }
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			i++
			if _, err := c.Get(ctx, strconv.Itoa(i), load); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkStampede: every goroutine asks for keys that expire all the time
// (each iteration moves to a new key after a slow 1 ms load); loads/op shows
// how many loader calls the herd caused per request.
func BenchmarkStampede(b *testing.B) {
	c := newBenchCache(b, benchAddr(b))
	ctx := context.Background()
	var loads, gen atomic.Int64
	load := func(context.Context) (benchUser, error) {
		loads.Add(1)
		time.Sleep(time.Millisecond)
		return sampleUser, nil
	}
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			key := strconv.FormatInt(gen.Load()/64, 10) // 64 requests per key generation
			gen.Add(1)
			if _, err := c.Get(ctx, key, load); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(loads.Load())/float64(b.N), "loads/op")
}
