package aside_test

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/asidecache/aside"
	"github.com/asidecache/aside/asidetest"
)

// T29: a change reaches the entries of every version of its cache in use —
// a rolling deploy that bumps WithVersion runs two — whichever version's
// process made it, through every way a change is made (Invalidate, Write,
// Set, Apply, and a Store that never created the cache, as an outbox
// relay), every read path, with and without L1.
func TestChangesReachEveryVersion(t *testing.T) {
	ways := []struct {
		name  string
		apply func(writer *aside.Store, newer *aside.Cache[int], relay *aside.Store, key string) error
	}{
		{"Invalidate", func(_ *aside.Store, newer *aside.Cache[int], _ *aside.Store, key string) error {
			return newer.Invalidate(bgCtx, key, key+"~pair")
		}},
		{"Write", func(writer *aside.Store, newer *aside.Cache[int], _ *aside.Store, key string) error {
			return writer.Write(bgCtx, func(context.Context) error { return nil }, newer.Changed(key, key+"~pair"))
		}},
		{"Set", func(_ *aside.Store, newer *aside.Cache[int], _ *aside.Store, key string) error {
			return newer.SetMany(bgCtx, map[string]int{key: 2, key + "~pair": 2})
		}},
		{"Apply by a Store without the cache", func(_ *aside.Store, _ *aside.Cache[int], relay *aside.Store, key string) error {
			return relay.ApplyRecorded(bgCtx, aside.Change{Cache: "items", Keys: []string{key, key + "~pair"}})
		}},
	}
	forEachBackend(t, func(t *testing.T, b *backend) {
		forEachPath(t, func(t *testing.T, p readPath) {
			for _, way := range ways {
				for _, l1 := range []bool{false, true} {
					name := way.name
					if l1 {
						name += "+L1"
					}
					t.Run(name, func(t *testing.T) {
						expectBroken(t, "a change reaches the other version's entries", func(broken bool) bool {
							prefix := uniquePrefix()
							hooks := &aside.TestHooks{OwnVersionsOnly: broken}
							stores := make([]*aside.Store, 3) // the old version's, the new one's, a relay's
							for i := range stores {
								s, err := aside.NewStore(b.client(t), aside.WithPrefix(prefix), aside.WithOpTimeout(time.Second))
								if err != nil {
									t.Fatal(err)
								}
								aside.SetStoreHooks(s, hooks)
								t.Cleanup(func() { _ = s.Close() })
								stores[i] = s
							}
							var opts []aside.Option
							if l1 {
								opts = append(opts, aside.WithL1(100, time.Minute))
							}
							older := newCache[int](t, stores[0], append(opts, aside.WithVersion(1))...)
							newer := newCache[int](t, stores[1], append(opts, aside.WithVersion(2))...)
							var db atomic.Int64
							db.Store(1)
							load := func(context.Context) (int, error) { return int(db.Load()), nil }
							for _, c := range []*aside.Cache[int]{older, newer} {
								if v, err := p.get(bgCtx, c, "k", load); v != 1 || err != nil {
									t.Fatalf("first read = %d, %v; want 1", v, err)
								}
							}
							db.Store(2) // committed
							if err := way.apply(stores[1], newer, stores[2], "k"); err != nil {
								t.Fatal(err)
							}
							vOld, _ := p.get(bgCtx, older, "k", load)
							vNew, _ := p.get(bgCtx, newer, "k", load)
							return vOld == 2 && vNew == 2
						})
					})
				}
			}
		})
	})
}

// A Store reads nothing before its versions are recorded, and records them
// again every refresh interval while it reads.
func TestVersionsAreRecordedBeforeTheFirstRead(t *testing.T) {
	srv := miniredis.RunT(t)
	b := &backend{addr: srv.Addr(), mini: srv}
	store, _ := b.newStore(t, aside.WithPrefix("p"))
	c := newCache[int](t, store, aside.WithVersion(7))
	if srv.Exists("p:#v:{items}") {
		t.Fatal("New wrote to Redis: it must work while Redis is down")
	}
	mustGet(t, c, "k", func(context.Context) (int, error) { return 1, nil })
	if got, err := srv.SMembers("p:#v:{items}"); err != nil || !reflect.DeepEqual(got, []string{"7"}) {
		t.Fatalf("versions in use = %v, %v; want [7] before the first read", got, err)
	}
	// Lost (a flush, a restart) without any breaker noticing: recorded
	// again, in the background, by a read after the refresh interval.
	aside.SetVersionRefresh(store, 50*time.Millisecond)
	srv.Del("p:#v:{items}")
	time.Sleep(100 * time.Millisecond)
	mustGet(t, c, "k", func(context.Context) (int, error) { return 1, nil })
	eventually(t, "the versions recorded again", func() bool { return srv.Exists("p:#v:{items}") })
}

// Apply and ApplyRecorded with Redis down: Apply queues (ErrQueued) and the
// replay reaches every version in use; ApplyRecorded queues nothing
// (ErrUnavailable): its record is retried by its owner.
func TestApplyWhileRedisIsDown(t *testing.T) {
	srv := miniredis.RunT(t)
	px := asidetest.NewProxy(t, srv.Addr())
	client := newClient(t, px.Addr())
	direct := newClient(t, srv.Addr())
	writer, err := aside.NewStore(client, aside.WithPrefix("p"), aside.WithOpTimeout(50*time.Millisecond), aside.WithBreaker(1, 20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close()
	reader, err := aside.NewStore(direct, aside.WithPrefix("p"), aside.WithOpTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	newer := newCache[int](t, writer, aside.WithVersion(2))
	older := newCache[int](t, reader, aside.WithVersion(1))
	var db atomic.Int64
	db.Store(1)
	load := func(context.Context) (int, error) { return int(db.Load()), nil }
	mustGet(t, newer, "k", load)
	mustGet(t, older, "k", load)

	db.Store(2)
	px.SetDown(true)
	change := newer.Changed("k")
	if err := writer.ApplyRecorded(bgCtx, change); !errors.Is(err, aside.ErrUnavailable) || errors.Is(err, aside.ErrQueued) {
		t.Fatalf("ApplyRecorded with Redis down = %v, want ErrUnavailable, not queued", err)
	}
	if n, _ := writer.Pending(); n != 0 {
		t.Fatalf("ApplyRecorded queued %d invalidations, want none", n)
	}
	if err := writer.Apply(bgCtx, change); !errors.Is(err, aside.ErrQueued) {
		t.Fatalf("Apply with Redis down = %v, want ErrQueued", err)
	}
	if n, _ := writer.Pending(); n != 1 {
		t.Fatalf("Apply queued %d invalidations, want 1", n)
	}
	px.SetDown(false)
	eventually(t, "the writer's read replays the queue", func() bool {
		mustGet(t, newer, "other", load)
		n, _ := writer.Pending()
		return n == 0
	})
	if v := mustGet(t, older, "k", load); v != 2 {
		t.Errorf("the other version's read after the replay = %d, want 2", v)
	}
}

// Changes are data: their JSON form round-trips, and Resolve refuses what
// could never be applied with an error that says what is wrong.
func TestChangesAreData(t *testing.T) {
	in := []aside.Change{{Cache: "items", Keys: []string{"a", "b:c"}}, {Tags: []string{"t"}, Stale: true}}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `[{"cache":"items","keys":["a","b:c"]},{"tags":["t"],"stale":true}]` {
		t.Errorf("JSON = %s", b)
	}
	var out []aside.Change
	if err := json.Unmarshal(b, &out); err != nil || !reflect.DeepEqual(in, out) {
		t.Errorf("round trip = %+v, %v; want %+v", out, err, in)
	}
	later := aside.Later(func() []aside.Change { return []aside.Change{{Tags: []string{"moved"}}} })
	got, err := aside.Resolve(later, aside.Change{}, in[0])
	if err != nil || len(got) != 2 || got[0].Tags[0] != "moved" {
		t.Errorf("Resolve = %+v, %v; want Later's change and the keys", got, err)
	}
	for _, tc := range []struct {
		change aside.Change
		want   string
	}{
		{aside.Change{Keys: []string{"a"}}, "keys without a cache name"},
		{aside.Change{Cache: "a:b", Keys: []string{"a"}}, "cache name"},
		{aside.Change{Cache: "items", Keys: []string{""}}, "empty key"},
		{aside.Change{Tags: []string{""}}, "empty tag"},
		{aside.Change{Tags: []string{strings.Repeat("t", 600)}}, "tag longer"},
	} {
		_, err := aside.Resolve(tc.change)
		if err == nil || !strings.HasPrefix(err.Error(), "aside: ") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Resolve(%+v) = %v, want an aside error about %q", tc.change, err, tc.want)
		}
	}
	srv := miniredis.RunT(t)
	store, _ := (&backend{addr: srv.Addr(), mini: srv}).newStore(t)
	if err := store.Apply(bgCtx, aside.Change{Cache: "x y", Keys: []string{"k"}}); err == nil {
		t.Error("Apply of an invalid change succeeded")
	}
	if n := len(entryKeys(srv)); n != 0 {
		t.Errorf("an invalid change wrote %d keys", n)
	}
}
