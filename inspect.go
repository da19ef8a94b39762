package aside

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/asidecache/aside/internal/envelope"
	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"
)

// EntryInfo describes one stored entry as [Cache.Inspect] and
// [Store.Inspect] read it: without loading, leasing or counting a read.
type EntryInfo struct {
	Cache    string
	Version  int
	Key      string
	RedisKey string
	Found    bool // an entry is stored; the fields below describe it
	Format   byte // the envelope's format (0xA1)
	// Flags are the entry's: "s2" (payload compressed), "negative" (a cached
	// not-found), "stale" (marked stale).
	Flags       []string
	TypeID      uint32    // fingerprint of the cached type
	Created     time.Time // when the load that wrote it began
	FreshUntil  time.Time
	LoadTime    time.Duration
	TTL         time.Duration // left in Redis; -1 without an expiry
	Size        int           // bytes stored
	PayloadSize int           // the payload decompressed
	Tags        []TagInfo
	// Lease is how long the lease held on the key has left (a load under
	// way, in some process); 0 without one.
	Lease time.Duration
	// Value is the payload decoded: a T from Cache.Inspect, msgpack decoded
	// into maps, slices and scalars from Store.Inspect. Nil for a negative
	// entry or a payload that did not decode (ValueError says why).
	Value      any
	ValueError string
}

// TagInfo is a tag an entry recorded, the token it recorded and whether it
// is still the tag's current one.
type TagInfo struct {
	Name, Token, Current string
	// State is "current", "soft-stale" (MarkTagsStale since: served stale
	// while it refreshes) or "invalidated" (a miss).
	State string
}

// Inspect reads the entry of key, decoding its value as a T.
func (c *Cache[T]) Inspect(ctx context.Context, key string) (EntryInfo, error) {
	if key == "" {
		return EntryInfo{}, errEmptyKey
	}
	info, e, err := c.store.inspect(ctx, c.name, c.version, key)
	if err != nil || !info.Found || e.Negative() {
		return info, err
	}
	if e.TypeID != c.typeID {
		info.ValueError = fmt.Sprintf("written for another type (fingerprint %08x, this cache's %08x)", e.TypeID, c.typeID)
		return info, nil
	}
	var v T
	if err := c.codec.Unmarshal(e.Payload, &v); err != nil {
		info.ValueError = err.Error()
		return info, nil
	}
	info.Value = v
	return info, nil
}

// Inspect reads the entry of key in the cache named cache, of the given
// version (0: the highest version recorded in Redis for the cache, or 1),
// without a [Cache] of its type: an operator's tool (cmd/aside) reads any
// cache this way. The value is decoded as msgpack into maps, slices and
// scalars; an entry of another codec reports a ValueError.
func (s *Store) Inspect(ctx context.Context, cache, key string, version int) (EntryInfo, error) {
	if err := validName("cache name", cache); err != nil {
		return EntryInfo{}, err
	}
	if key == "" {
		return EntryInfo{}, errEmptyKey
	}
	if version < 0 {
		return EntryInfo{}, fmt.Errorf("aside: version must be >= 0, got %d", version)
	}
	if version == 0 {
		octx, cancel := s.opContext(ctx)
		inUse, err := s.versionsInUse(octx, []string{cache})
		cancel()
		if err != nil {
			return EntryInfo{}, opErr("inspect", fmt.Errorf("%w: %w", ErrUnavailable, err))
		}
		version = slices.Max(append(inUse[cache], 1)) // 1 when none is recorded
	}
	info, e, err := s.inspect(ctx, cache, version, key)
	if err != nil || !info.Found || e.Negative() {
		return info, err
	}
	var v any
	if err := msgpack.Unmarshal(e.Payload, &v); err != nil {
		info.ValueError = fmt.Sprintf("not msgpack (a cache with its own codec?): %v", err)
		return info, nil
	}
	info.Value = v
	return info, nil
}

// inspect reads an entry, its TTL and its lease in one round trip (they
// share a hash slot), then the current tokens of its tags.
func (s *Store) inspect(ctx context.Context, cache string, version int, key string) (EntryInfo, envelope.Envelope, error) {
	rk := newKeyspace(s.prefix, cache, version).entry(key)
	info := EntryInfo{Cache: cache, Version: version, Key: key, RedisKey: rk}
	octx, cancel := s.opContext(ctx)
	defer cancel()
	var get *redis.StringCmd
	var ttl, lease *redis.DurationCmd
	_, err := s.rdb.Pipelined(octx, func(p redis.Pipeliner) error {
		get = p.Get(octx, rk)
		ttl = p.PTTL(octx, rk)
		lease = p.PTTL(octx, leaseKey(rk))
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return info, envelope.Envelope{}, opErr("inspect", fmt.Errorf("%w: %w", ErrUnavailable, err))
	}
	if d := lease.Val(); d > 0 {
		info.Lease = d
	}
	raw, err := get.Bytes()
	if err != nil { // redis.Nil: no entry
		return info, envelope.Envelope{}, nil
	}
	e, err := envelope.Decode(raw, nil, nil)
	info.Found, info.Size, info.TTL = true, len(raw), ttl.Val()
	if len(raw) > 0 {
		info.Format = raw[0]
	}
	if err != nil {
		info.ValueError = err.Error()
		return info, envelope.Envelope{}, nil
	}
	for _, f := range []struct {
		bit  byte
		name string
	}{{envelope.FlagS2, "s2"}, {envelope.FlagNegative, "negative"}, {envelope.FlagStale, "stale"}} {
		if raw[1]&f.bit != 0 { // as stored: Decode clears s2 once it has decompressed
			info.Flags = append(info.Flags, f.name)
		}
	}
	info.TypeID, info.PayloadSize = e.TypeID, len(e.Payload)
	info.Created, info.FreshUntil = time.UnixMilli(e.CreatedMs), time.UnixMilli(e.FreshMs)
	info.LoadTime = time.Duration(e.LoadMicros) * time.Microsecond
	if len(e.Tags) > 0 {
		names := make([]string, len(e.Tags))
		for i, t := range e.Tags {
			names[i] = t.Name
		}
		current, err := s.fetchTokens(ctx, names)
		if err != nil {
			return info, e, opErr("inspect", fmt.Errorf("%w: tags: %w", ErrUnavailable, err))
		}
		for i, t := range e.Tags {
			state := "invalidated"
			switch {
			case current[i] == t.Token:
				state = "current"
			case current[i] != "" && hardHalf(current[i]) == hardHalf(t.Token):
				state = "soft-stale"
			}
			info.Tags = append(info.Tags, TagInfo{Name: t.Name, Token: t.Token, Current: current[i], State: state})
		}
		slices.SortFunc(info.Tags, func(a, b TagInfo) int { return strings.Compare(a.Name, b.Name) })
	}
	return info, e, nil
}
