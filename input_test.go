package aside_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/asidecache/aside"
)

// TestBadInputIsAClearError: every rejected input is an "aside: ..." error
// naming what was wrong, never a panic or a silent default.
func TestBadInputIsAClearError(t *testing.T) {
	srv := miniredis.RunT(t)
	rdb := newClient(t, srv.Addr())
	store, err := aside.NewStore(rdb)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	load := func(context.Context) (int, error) { return 1, nil }
	type withFunc struct{ F func() }
	type withChan struct{ Items map[string][]chan int }
	type money struct{ cents int }
	_ = money{}.cents // what msgpack would drop
	type priced struct {
		SKU   string
		Price money
	}
	cache, _ := aside.New[int](store, "ok")
	tests := []struct {
		name string
		run  func() error
		want string
	}{
		{"nil client", func() error { _, err := aside.NewStore(nil); return err }, "nil redis client"},
		{"bad prefix", func() error { _, err := aside.NewStore(rdb, aside.WithPrefix("a:b")); return err }, "prefix"},
		{"zero op timeout", func() error { _, err := aside.NewStore(rdb, aside.WithOpTimeout(0)); return err }, "op timeout"},
		{"bad breaker", func() error { _, err := aside.NewStore(rdb, aside.WithBreaker(0, time.Second)); return err }, "breaker"},
		{"bad stall tolerance", func() error { _, err := aside.NewStore(rdb, aside.WithStallTolerance(-time.Second)); return err }, "stall tolerance"},
		{"zero TTL profile", func() error {
			_, err := aside.NewStore(rdb, aside.WithProfiles(aside.Profile{Name: "p", LoadTimeout: time.Second}))
			return err
		}, "TTL must be > 0"},
		{"negative jitter", func() error {
			_, err := aside.NewStore(rdb, aside.WithProfiles(aside.Profile{Name: "p", TTL: time.Second, Jitter: -1, LoadTimeout: time.Second}))
			return err
		}, "Jitter must be >= 0"},
		{"duplicate profile", func() error {
			p := aside.Profile{Name: "p", TTL: time.Second, LoadTimeout: time.Second}
			_, err := aside.NewStore(rdb, aside.WithProfiles(p, p))
			return err
		}, "registered twice"},
		{"nil store", func() error { _, err := aside.New[int](nil, "x"); return err }, "nil store"},
		{"empty name", func() error { _, err := aside.New[int](store, ""); return err }, "empty cache name"},
		{"malformed name", func() error { _, err := aside.New[int](store, "prod{1}"); return err }, "cache name"},
		{"version 0", func() error { _, err := aside.New[int](store, "x", aside.WithVersion(0)); return err }, "version must be >= 1"},
		{"unknown profile", func() error { _, err := aside.New[int](store, "x", aside.WithProfile("nope")); return err }, `unknown profile "nope"`},
		{"func field", func() error { _, err := aside.New[withFunc](store, "x"); return err }, "value.F is a func"},
		{"nested chan", func() error { _, err := aside.New[withChan](store, "x"); return err }, "chan"},
		{"only unexported fields", func() error { _, err := aside.New[money](store, "x"); return err }, "value has no exported fields"},
		{"nested unexported fields", func() error { _, err := aside.New[[]priced](store, "x"); return err }, "value[].Price has no exported fields"},
		{"one name, two types", func() error { _, err := aside.New[string](store, "ok"); return err }, `cache "ok" already holds int`},
		{"empty key", func() error { _, err := cache.Get(bgCtx, "", load); return err }, "empty key"},
		{"nil loader", func() error { _, err := cache.Get(bgCtx, "k", nil); return err }, "nil loader"},
		{"empty key in Set", func() error { return cache.Set(bgCtx, "", 1) }, "empty key"},
		{"empty key in Invalidate", func() error { return cache.Invalidate(bgCtx, "a", "") }, "empty key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.run()
			if err == nil || !strings.HasPrefix(err.Error(), "aside: ") || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %v, want an aside: error containing %q", err, tt.want)
			}
		})
	}
}

// TestTypesThatEncodeThemselvesAreAccepted: the check for types msgpack
// would store empty lets through those it encodes through a method, and
// the same name with the same type twice.
func TestTypesThatEncodeThemselvesAreAccepted(t *testing.T) {
	store, _ := (&backend{addr: miniredis.RunT(t).Addr()}).newStore(t)
	if _, err := aside.New[time.Time](store, "when"); err != nil {
		t.Error(err)
	}
	if _, err := aside.New[selfEncoded](store, "self"); err != nil {
		t.Error(err)
	}
	if _, err := aside.New[struct{}](store, "empty"); err != nil {
		t.Error(err)
	}
	if _, err := aside.New[time.Time](store, "when"); err != nil {
		t.Errorf("the same name and type again: %v", err)
	}
}

type selfEncoded struct{ n int }

func (s selfEncoded) MarshalText() ([]byte, error) { return []byte{byte('0' + s.n)}, nil }
func (s *selfEncoded) UnmarshalText(b []byte) error {
	s.n = int(b[0] - '0')
	return nil
}

// TestUndecodablySizedValuesAreNotStored: a value the decoder would refuse
// (over its 64 MiB bound) is returned and counted, never stored — stored,
// it would be reloaded and rewritten on every read.
func TestUndecodablySizedValuesAreNotStored(t *testing.T) {
	requireLong(t)
	b := &backend{addr: miniredis.RunT(t).Addr()}
	p := aside.Profile{Name: "huge", TTL: time.Minute, LoadTimeout: 10 * time.Second, CompressAbove: 1024} // no MaxEntryBytes
	store, _ := b.newStore(t, aside.WithProfiles(p))
	c := newCache[string](t, store, aside.WithProfile("huge"))
	big := strings.Repeat("z", 65<<20) // compresses to little: only the decoded size is too big
	if err := c.Set(bgCtx, "big", big); err == nil || !strings.Contains(err.Error(), "64 MiB") {
		t.Errorf("Set = %v, want an error naming the 64 MiB bound", err)
	}
	var calls atomic.Int32
	for range 2 {
		if got := mustGet(t, c, "big", countingLoader(big, &calls)); len(got) != len(big) {
			t.Fatal("value not returned")
		}
	}
	if s := c.Stats(); calls.Load() != 2 || s.OversizeSkips != 3 || s.BytesWritten != 0 {
		t.Errorf("loads %d, stats %+v; want 2 loads, 3 oversize skips, nothing written", calls.Load(), s)
	}
}

// unencodable fails in the codec only at run time (a custom codec skips the
// check in New).
type failingCodec struct{}

func (failingCodec) Marshal(any) ([]byte, error) { return nil, errCodec }
func (failingCodec) Unmarshal([]byte, any) error { return errCodec }

var errCodec = &codecError{}

type codecError struct{}

func (*codecError) Error() string { return "cannot encode" }

func TestEncodeErrorReturnsValueAndIsCounted(t *testing.T) {
	b := &backend{addr: miniredis.RunT(t).Addr()}
	store, _ := b.newStore(t)
	c := newCache[int](t, store, aside.WithCodec(failingCodec{}))
	if got := mustGet(t, c, "k", func(context.Context) (int, error) { return 3, nil }); got != 3 {
		t.Fatalf("Get = %d, want the loaded 3", got)
	}
	if s := c.Stats(); s.EncodeErrors != 1 || s.BytesWritten != 0 {
		t.Errorf("stats = %+v, want 1 encode error and nothing written", s)
	}
	if err := c.Set(bgCtx, "k", 1); err == nil || !strings.Contains(err.Error(), "aside: encode: cannot encode") {
		t.Errorf("Set = %v, want the encode error", err)
	}
}

func TestOversizeValuesAreReturnedNotStored(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		p := aside.Profile{Name: "small", TTL: time.Minute, LoadTimeout: time.Second, MaxEntryBytes: 256}
		store, _ := b.newStore(t, aside.WithProfiles(p))
		c := newCache[string](t, store, aside.WithProfile("small"))
		big := strings.Repeat("z", 1000)
		var calls atomic.Int32
		for range 2 {
			if got := mustGet(t, c, "big", countingLoader(big, &calls)); got != big {
				t.Fatal("oversize value not returned")
			}
		}
		if s := c.Stats(); calls.Load() != 2 || s.OversizeSkips != 2 || s.BytesWritten != 0 {
			t.Errorf("loads %d, stats %+v; want 2 loads, 2 oversize skips, nothing written", calls.Load(), s)
		}
		if err := c.Set(bgCtx, "big", big); err == nil || !strings.Contains(err.Error(), "exceeds MaxEntryBytes 256") {
			t.Errorf("Set of an oversize value = %v, want an error", err)
		}
	})
}

func TestLargeValuesAreCompressed(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		p := aside.Profile{Name: "zip", TTL: time.Minute, LoadTimeout: time.Second, CompressAbove: 512}
		store, _ := b.newStore(t, aside.WithProfiles(p))
		c := newCache[string](t, store, aside.WithProfile("zip"))
		v := strings.Repeat("the same words again ", 500) // ~10 KB
		mustGet(t, c, "doc", func(context.Context) (string, error) { return v, nil })
		if got := mustGet(t, c, "doc", func(context.Context) (string, error) { return "", nil }); got != v {
			t.Fatal("compressed value did not round-trip")
		}
		if w := c.Stats().BytesWritten; w == 0 || w > uint64(len(v))/4 {
			t.Errorf("stored %d bytes for a %d-byte value, want it compressed", w, len(v))
		}
	})
}

// TestFailedSetInvalidates: a Set that cannot store its value (too big, not
// encodable, Redis away) must not leave the value it meant to replace.
func TestFailedSetInvalidates(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		p := aside.Profile{Name: "small", TTL: time.Minute, LoadTimeout: time.Second, MaxEntryBytes: 256}
		store, _ := b.newStore(t, aside.WithProfiles(p))
		c := newCache[string](t, store, aside.WithProfile("small"))
		if err := c.Set(bgCtx, "k", "old"); err != nil {
			t.Fatal(err)
		}
		if err := c.Set(bgCtx, "k", strings.Repeat("new ", 200)); err == nil {
			t.Fatal("an oversize Set returned no error")
		}
		if got := mustGet(t, c, "k", func(context.Context) (string, error) { return "from the source", nil }); got != "from the source" {
			t.Errorf("after a failed Set: %q, want a miss served by the loader", got)
		}
	})
}

// TestErrorsReadWithOnePrefix: an error that wraps aside's own errors reads
// "aside: <op>: ..." once — not "aside: invalidate: aside: redis
// unavailable: aside: ..." — and still matches every sentinel it wraps.
func TestErrorsReadWithOnePrefix(t *testing.T) {
	srv := miniredis.RunT(t)
	store, err := aside.NewStore(newClient(t, srv.Addr()), aside.WithOpTimeout(50*time.Millisecond), aside.WithStallTolerance(0))
	if err != nil {
		t.Fatal(err)
	}
	cache, err := aside.New[int](store, "one")
	if err != nil {
		t.Fatal(err)
	}
	srv.Close() // every call fails from here on
	checks := []struct {
		op   string
		err  error
		want []error
	}{}
	for i := 0; i < 3; i++ { // the breaker opens on the way: both kinds of failure
		err := cache.Invalidate(bgCtx, aside.Key("k", strings.Repeat("x", i)))
		checks = append(checks, struct {
			op   string
			err  error
			want []error
		}{"invalidate", err, []error{aside.ErrQueued, aside.ErrUnavailable}})
	}
	_, err = cache.Peek(bgCtx, "k")
	checks = append(checks, struct {
		op   string
		err  error
		want []error
	}{"peek", err, []error{aside.ErrUnavailable}})
	err = store.Close()
	checks = append(checks, struct {
		op   string
		err  error
		want []error
	}{"close", err, []error{aside.ErrUnavailable}})
	for _, c := range checks {
		if c.err == nil {
			t.Errorf("%s: no error with Redis gone", c.op)
			continue
		}
		if n := strings.Count(c.err.Error(), "aside:"); n != 1 || !strings.HasPrefix(c.err.Error(), "aside: ") {
			t.Errorf("%s: %q has %d \"aside:\" prefixes, want one at the start", c.op, c.err, n)
		}
		for _, w := range c.want {
			if !errors.Is(c.err, w) {
				t.Errorf("%s: %v does not match %v", c.op, c.err, w)
			}
		}
	}
}
