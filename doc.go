// Package aside is a cache-aside library for Go services over Redis.
//
// A [Store] wraps one go-redis client (single node, Sentinel, Ring or
// Cluster); [New] derives a typed [Cache] for one namespace, schema version
// and value type. [Cache.Get] returns the cached value, or calls the loader
// (the slow repository call) on a miss, stores its result and returns it.
//
// Keys are self-describing and versioned: "prefix:name:vN:{key}". The user
// key is escaped so that it can neither collide with another key, nor change
// the Redis Cluster slot, nor act as a SCAN pattern; build multi-part keys
// with [Key]. Bumping the version ([WithVersion]) makes every old entry
// unreachable at once.
//
// A hit costs one round trip (GET) and a decode — or nothing with the
// local tier ([WithL1]). A miss takes a lease in a key beside the entry's:
// across every process one caller loads while the others wait for its
// value, and the value is written with a compare-and-set on the lease, so a
// load that read a row before an invalidation can never write it back.
// Entries refresh early (XFetch), may be served stale while one caller
// reloads them ([Profile].StaleWindow), and a loader's [ErrNotFound] is
// cached for a while.
//
// Invalidation is by key ([Cache.Invalidate]), by tag ([Tags],
// [Store.InvalidateTags]: one command whatever the number of tagged
// entries), by namespace (version, [Cache.Purge]), hard or soft
// ([Cache.MarkStale]); [Store.Write] runs it after the write it follows.
// Once an invalidation has returned, no Get that starts afterwards returns
// the old value, from Redis or from any process's local tier (strict L1:
// the invalidation waits for every live Store's acknowledgement, a silent
// one at most its lease; [WithRelaxedL1] trades that wait for a window of a
// pub/sub delivery).
//
// Redis is an optimisation, never a dependency: every Redis call ends
// within its deadline ([WithOpTimeout], [WithStallTolerance]); a failed
// read is counted and served by the loader; a circuit breaker — the Store's,
// and one per Cluster master or Ring shard — stops calling what does not
// answer until a probe succeeds; an invalidation that could not reach Redis
// is returned as [ErrQueued] and replayed before Redis is read again.
//
// All methods are safe for concurrent use. The design and the tests of each
// guarantee are in the repository's docs/ folder.
package aside
