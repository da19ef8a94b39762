package bus

import (
	"log/slog"
	"math"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"
)

func newTestBus() *Bus {
	return New(Config{Client: redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}), Prefix: "t", Lease: DefaultLease,
		Log: func(slog.Level, string, ...any) {}})
}

// TestTagInvalidationRefusesARacingFill: a fill whose note predates a tag
// invalidation is refused, whether the invalidation came before the fill
// read the generations (TagGens) or after (Valid); an unrelated cache's
// keys change nothing the bus guards.
func TestTagInvalidationRefusesARacingFill(t *testing.T) {
	b := newTestBus()
	b.heard(time.Now()) // the stream is trusted: L1 may fill
	tags := []string{"a", "b"}
	name := func(s string) string { return s }
	slots, gens := make([]uint16, 2), make([]uint64, 2)

	n := b.Note()
	if !n.Up {
		t.Fatal("a heard heartbeat left the bus down")
	}
	if !TagGens(b, n, tags, name, slots, gens) || !b.Valid(n.Epoch, slots, gens) {
		t.Fatal("nothing happened since the note, yet the fill is refused")
	}
	b.Apply(Message{Kind: KindKeys, Cache: "other", Names: []string{"a"}})
	if !b.Valid(n.Epoch, slots, gens) {
		t.Fatal("keys of a cache invalidated the tags' generations")
	}
	b.Apply(Message{Kind: KindTags, Names: []string{"b"}})
	if b.Valid(n.Epoch, slots, gens) {
		t.Fatal("an entry of tag b is still valid after b's invalidation")
	}
	if TagGens(b, n, tags, name, slots, gens) {
		t.Fatal("a fill noted before b's invalidation read generations after it, and was kept")
	}
	if n2 := b.Note(); !TagGens(b, n2, tags, name, slots, gens) || !b.Valid(n2.Epoch, slots, gens) {
		t.Fatal("a fill noted after the invalidation is refused")
	}
	if b.drop(); b.Valid(n.Epoch, slots, gens) || b.Note().Up {
		t.Fatal("a reset of the stream left entries valid, or the bus up")
	}
}

// TestLeaseRule: no lease serves nothing, a relaxed one always serves, a
// strict one until its end on the lease clock.
func TestLeaseRule(t *testing.T) {
	b := newTestBus()
	for _, tc := range []struct {
		lease, mono int64
		holds       bool
	}{{0, 1, false}, {math.MaxInt64, 1 << 62, true}, {100, 99, true}, {100, 100, false}} {
		if got := b.Holds(tc.lease, tc.mono); got != tc.holds {
			t.Errorf("Holds(%d, %d) = %v", tc.lease, tc.mono, got)
		}
	}
}

// TestEncodeBatchesNames: a mass invalidation is a few messages of at most
// batchNames names each, every name in exactly one.
func TestEncodeBatchesNames(t *testing.T) {
	b := newTestBus()
	names := make([]string, 2*batchNames+3)
	for i := range names {
		names[i] = string(rune('a'+i%26)) + string(rune('0'+i%10))
	}
	payloads := b.encode(Message{Kind: KindKeys, Cache: "c", Names: names})
	if len(payloads) != 3 {
		t.Fatalf("%d messages for %d names", len(payloads), len(names))
	}
	n := 0
	for _, p := range payloads {
		var m Message
		if err := msgpack.Unmarshal(p, &m); err != nil {
			t.Fatal(err)
		}
		if m.Origin != b.origin || m.Kind != KindKeys || m.Cache != "c" || len(m.Names) > batchNames {
			t.Fatalf("message %+v", m)
		}
		for _, name := range m.Names {
			if name != names[n] {
				t.Fatalf("name %d is %q, want %q", n, name, names[n])
			}
			n++
		}
	}
	if n != len(names) {
		t.Fatalf("%d names decoded of %d", n, len(names))
	}
}
