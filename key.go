package aside

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
)

// Bounds on key lengths. A part longer than maxPartLen is replaced by a hash
// inside [Key]; an escaped key longer than maxKeyLen is hashed when the Redis
// key is built, so personalised keys (filter sets, interest lists) stay short.
const (
	maxPartLen = 64
	maxKeyLen  = 200
	// hashMarker starts a hashed key. It is always escaped in user input,
	// so a literal key can never look like a hash.
	hashMarker = '#'
	// partEscape is Key's own escape: the only bytes Key changes are ':'
	// and '~' inside a part (and a long part, which it hashes), and '~' is
	// a byte the Redis key keeps as it is, so a key built by Key is escaped
	// once, by the same rule as a tag: Key("o3:x") is {o3~3Ax} in Redis.
	partEscape = '~'
)

// Key joins parts into one cache key, unambiguously: Key("a:b") and
// Key("a", "b") differ, and no part can change another's meaning — inside a
// part, ':' becomes "~3A" and '~' "~7E". Parts longer than 64 bytes are
// replaced by "~h" and a 128-bit SHA-256 prefix. Every other byte is left
// as it is: the Redis key escapes what Redis must not see, once. Use it
// whenever a key is built from more than one value or from user input:
//
//	products.Get(ctx, aside.Key(id, locale), load)
func Key(parts ...string) string {
	var b strings.Builder
	for i, p := range parts {
		if i > 0 {
			b.WriteByte(':')
		}
		if len(p) > maxPartLen {
			sum := sha256.Sum256([]byte(p))
			b.WriteByte(partEscape)
			b.WriteByte('h')
			b.WriteString(hex.EncodeToString(sum[:16]))
			continue
		}
		for j := 0; j < len(p); j++ {
			switch c := p[j]; c {
			case ':':
				b.WriteString("~3A")
			case partEscape:
				b.WriteString("~7E")
			default:
				b.WriteByte(c)
			}
		}
	}
	return b.String()
}

// needsEscape reports whether c cannot appear literally in the part of a Redis
// key that holds user input: hash-tag braces (they would move the Cluster
// slot), glob metacharacters (SCAN/KEYS patterns), the escape and hash
// markers themselves, and whitespace or control bytes.
func needsEscape(c byte) bool {
	switch c {
	case '%', '{', '}', '*', '?', '[', ']', '\\', hashMarker:
		return true
	}
	return c <= ' ' || c == 0x7f
}

func escapeInto(b *strings.Builder, s string) {
	const hexDigits = "0123456789ABCDEF"
	for i := 0; i < len(s); i++ {
		c := s[i]
		if needsEscape(c) {
			b.WriteByte('%')
			b.WriteByte(hexDigits[c>>4])
			b.WriteByte(hexDigits[c&0xf])
			continue
		}
		b.WriteByte(c)
	}
}

func writeHash(b *strings.Builder, s string) {
	sum := sha256.Sum256([]byte(s))
	b.WriteByte(hashMarker)
	b.WriteString(hex.EncodeToString(sum[:16]))
}

func isPlain(s string) bool {
	for i := 0; i < len(s); i++ {
		if needsEscape(s[i]) {
			return false
		}
	}
	return true
}

// keyspace builds every Redis key string of one cache; no other code does.
type keyspace struct {
	entryPrefix string // "prefix:name:vN:{"
}

func newKeyspace(prefix, name string, version int) keyspace {
	return keyspace{entryPrefix: prefix + ":" + name + ":v" + strconv.Itoa(version) + ":{"}
}

// entry returns the Redis key of one cache entry. The escaped user key is the
// hash tag, so the entry and everything stored beside it share one slot, and
// no user input can choose the slot of another key.
func (k keyspace) entry(key string) string {
	if len(key) <= maxKeyLen && isPlain(key) {
		return k.entryPrefix + key + "}" // the common case: one allocation
	}
	return hashTagged(k.entryPrefix, key)
}

// leaseKey returns the key of an entry's lease, beside the entry under its
// hash tag. An entry key ends in '}', so no entry key is a lease key.
func leaseKey(rk string) string { return rk + ":l" }

// tagKey returns the Redis key holding one tag's token: one key per tag,
// shared by every cache of the Store. '#' cannot start a cache name, so tag
// keys never collide with entries; the escaped tag is the key's hash tag.
func tagKey(prefix, tag string) string {
	if len(tag) <= maxKeyLen && isPlain(tag) {
		return prefix + ":#tag:{" + tag + "}" // the common case: one allocation
	}
	return hashTagged(prefix+":#tag:{", tag)
}

// hashTagged returns head + the escaped user string + "}", hashing the user
// string when its escaped form is longer than maxKeyLen.
func hashTagged(head, user string) string {
	var esc strings.Builder
	escapeInto(&esc, user)
	var b strings.Builder
	b.Grow(len(head) + min(esc.Len(), maxKeyLen) + 2)
	b.WriteString(head)
	if esc.Len() > maxKeyLen {
		writeHash(&b, user)
	} else {
		b.WriteString(esc.String())
	}
	b.WriteByte('}')
	return b.String()
}

// pattern returns a SCAN pattern matching the entries of every version of
// a cache. Prefix and name hold no glob metacharacters (validName), and the
// ":v" after the name keeps "items" from matching "items.x".
func pattern(prefix, name string) string { return prefix + ":" + name + ":v*" }

// validName checks a prefix, cache or profile name: 1–64 bytes of letters,
// digits, '_', '-' and '.', so that names cannot inject separators, hash tags
// or glob patterns into keys.
func validName(kind, s string) error {
	if s == "" {
		return fmt.Errorf("aside: empty %s", kind)
	}
	if len(s) > 64 {
		return fmt.Errorf("aside: %s longer than 64 bytes", kind)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.'
		if !ok {
			return fmt.Errorf("aside: %s %q: byte %q not allowed (use letters, digits, '_', '-', '.')", kind, s, c)
		}
	}
	return nil
}
