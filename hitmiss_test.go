package aside_test

import (
	"context"
	"math/rand/v2"
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/asidecache/aside"
)

// A hit returns what the miss returned: the value a miss hands its caller
// is the one its entry decodes to, so a response never changes between the
// first read and the next — times (msgpack decodes them in time.Local),
// nil and empty slices and maps, pointers, embedded and nested structs,
// []byte.

type hmInner struct {
	N int
	S string
}

type hmEmbedded struct{ E string }

type hmValue struct {
	hmEmbedded
	AtUTC, AtZone, AtLocal, Zero time.Time
	NilSlice, EmptySlice, Slice  []int
	NilMap, EmptyMap, Map        map[string]int
	NilPtr, Ptr                  *hmInner
	NilBytes, EmptyBytes, Bytes  []byte
	Nested                       []hmInner
	Deep                         map[string][]*hmInner
}

// randomValue is a value with every kind of field set, from seed.
func randomValue(seed uint64) hmValue {
	r := rand.New(rand.NewPCG(seed, 7))
	at := time.Unix(r.Int64N(4e9), r.Int64N(1e9))
	v := hmValue{
		hmEmbedded: hmEmbedded{E: strconv.FormatUint(r.Uint64(), 36)},
		AtUTC:      at.UTC(),
		AtZone:     at.In(time.FixedZone("X", int(r.Int64N(24)-12)*3600)),
		AtLocal:    at.Local(),
		EmptySlice: []int{},
		Slice:      []int{r.IntN(100), -r.IntN(100)},
		EmptyMap:   map[string]int{},
		Map:        map[string]int{"a": r.IntN(100)},
		Ptr:        &hmInner{N: r.IntN(100), S: "p"},
		EmptyBytes: []byte{},
		Bytes:      []byte{byte(r.IntN(256)), 0},
		Nested:     []hmInner{{N: 1}, {S: "two"}},
		Deep:       map[string][]*hmInner{"x": {{N: r.IntN(9)}, nil}, "empty": {}},
	}
	return v
}

// TestHitEqualsMiss: for random values of every kind of field, the miss
// (and a caller that joined its load), a hit from Redis on this Store and
// on another one, and an L1 hit all return equal values, through Get,
// GetMany and the lease-first Get. Broken variant: the miss returns the
// loader's own value (its times in their own locations, not time.Local).
func TestHitEqualsMiss(t *testing.T) {
	type read func(ctx context.Context, c *aside.Cache[hmValue], key string, load aside.Loader[hmValue]) (hmValue, error)
	get := func(opts ...aside.CallOption) read {
		return func(ctx context.Context, c *aside.Cache[hmValue], key string, load aside.Loader[hmValue]) (hmValue, error) {
			return c.Get(ctx, key, load, opts...)
		}
	}
	paths := map[string]read{
		"Get":             get(),
		"Get-lease-first": get(aside.LeaseFirstCall()),
		"GetMany": func(ctx context.Context, c *aside.Cache[hmValue], key string, load aside.Loader[hmValue]) (hmValue, error) {
			m, err := c.GetMany(ctx, []string{key}, func(ctx context.Context, keys []string) (map[string]hmValue, error) {
				v, err := load(ctx)
				return map[string]hmValue{keys[0]: v}, err
			})
			return m[key], err
		},
	}
	for name, read := range paths {
		t.Run(name, func(t *testing.T) {
			expectBroken(t, "every read returns what the miss returned", func(broken bool) bool {
				srv := miniredis.RunT(t)
				b := &backend{addr: srv.Addr(), mini: srv}
				prefix := uniquePrefix()
				sa, _ := b.newStore(t, aside.WithPrefix(prefix))
				sb, _ := b.newStore(t, aside.WithPrefix(prefix))
				ca := newCache[hmValue](t, sa, aside.WithL1(100, time.Minute))
				cb := newCache[hmValue](t, sb)
				aside.SetTestHooks(ca, &aside.TestHooks{RawMissValue: broken})
				same := true
				for i := range 20 {
					key := "v" + strconv.Itoa(i)
					want := randomValue(uint64(i))
					load := func(context.Context) (hmValue, error) { return want, nil }
					miss, err := read(bgCtx, ca, key, load)
					if err != nil {
						t.Fatal(err)
					}
					if err := sa.Wait(bgCtx); err != nil {
						t.Fatal(err)
					}
					l1, err := read(bgCtx, ca, key, load) // from ca's L1
					if err != nil {
						t.Fatal(err)
					}
					hit, err := read(bgCtx, cb, key, load) // from Redis
					if err != nil {
						t.Fatal(err)
					}
					for what, got := range map[string]hmValue{"the L1 hit": l1, "the Redis hit": hit} {
						if !reflect.DeepEqual(miss, got) {
							if !broken {
								t.Logf("value %d: %s differs from the miss:\n miss %#v\n  got %#v", i, what, miss, got)
							}
							same = false
						}
					}
				}
				return same
			})
		})
	}
}
