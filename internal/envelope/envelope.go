// Package envelope is the byte layout of one cache entry as stored in Redis,
// and every Lua script that reads or changes those bytes in place: the
// format lives in one place, so a change to it cannot miss a script.
//
// An entry is one byte string:
//
//	[0]    format (Format)
//	[1]    flags (FlagS2, FlagNegative, FlagStale)
//	[2:6]  type fingerprint of the cached type, little endian
//	uvarint created-at, fresh-until (Unix ms), load duration (µs)
//	uvarint tag count, then per tag: uvarint length + name, uvarint length + token
//	payload (codec bytes, s2-compressed when FlagS2)
package envelope

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"

	"github.com/klauspost/compress/s2"
)

// The format byte and the flags.
const (
	Format       byte = 0xA1
	FlagS2       byte = 1 << 0
	FlagNegative byte = 1 << 1 // a cached not-found: no payload
	FlagStale    byte = 1 << 2 // set in place by MarkStaleScript
	knownFlags        = FlagS2 | FlagNegative | FlagStale
)

// Bounds of what an entry may hold, checked on both sides.
const (
	MaxTags     = 64  // per entry
	MaxTokenLen = 64  // a tag token: hard + soft part, hex
	MaxTagLen   = 512 // a tag name as stored
	// MaxDecodedBytes bounds decompression so a planted entry cannot make a
	// reader allocate without limit.
	MaxDecodedBytes = 64 << 20
)

// ErrCorrupt is wrapped by every error of Decode.
var ErrCorrupt = errors.New("aside: corrupt entry")

// Tag is a tag and the token it had when the entry's load began.
type Tag struct{ Name, Token string }

// Envelope is the decoded header of one entry; Payload aliases the input
// unless it was decompressed.
type Envelope struct {
	Flags      byte
	TypeID     uint32
	CreatedMs  int64
	FreshMs    int64
	LoadMicros int64
	Tags       []Tag
	Payload    []byte
}

// Negative reports a cached not-found.
func (e *Envelope) Negative() bool { return e.Flags&FlagNegative != 0 }

// Stale reports an entry marked stale (soft-invalidated).
func (e *Envelope) Stale() bool { return e.Flags&FlagStale != 0 }

// HasTag reports whether the entry recorded a token for tag name.
func (e *Envelope) HasTag(name string) bool {
	for _, t := range e.Tags {
		if t.Name == name {
			return true
		}
	}
	return false
}

// Encode builds the stored bytes. The payload is compressed with s2 when it
// is at least compressAbove bytes (0: never) and compression saves space.
func Encode(e Envelope, compressAbove int) []byte {
	payload := e.Payload
	flags := e.Flags
	if compressAbove > 0 && len(payload) >= compressAbove {
		if c := s2.Encode(nil, payload); len(c) < len(payload) {
			payload, flags = c, flags|FlagS2
		}
	}
	size := 6 + 4*binary.MaxVarintLen64 + len(payload)
	for _, t := range e.Tags {
		size += 2*binary.MaxVarintLen64 + len(t.Name) + len(t.Token)
	}
	out := make([]byte, 0, size)
	out = append(out, Format, flags)
	out = binary.LittleEndian.AppendUint32(out, e.TypeID)
	out = binary.AppendUvarint(out, uint64(max(e.CreatedMs, 0)))
	out = binary.AppendUvarint(out, uint64(max(e.FreshMs, 0)))
	out = binary.AppendUvarint(out, uint64(max(e.LoadMicros, 0)))
	out = binary.AppendUvarint(out, uint64(len(e.Tags)))
	for _, t := range e.Tags {
		out = binary.AppendUvarint(out, uint64(len(t.Name)))
		out = append(out, t.Name...)
		out = binary.AppendUvarint(out, uint64(len(t.Token)))
		out = append(out, t.Token...)
	}
	return append(out, payload...)
}

// Decode parses b without panicking on any input. The returned payload is
// decompressed, or aliases b. A tag name in knownNames, or a token in
// knownTokens (as a rule the reader's tags and the tokens it read), is
// returned as that string, not as a new one: a hit allocates no strings for
// the tags it checks.
func Decode(b []byte, knownNames, knownTokens []string) (Envelope, error) {
	var e Envelope
	if len(b) < 6 {
		return e, fmt.Errorf("%w: %d bytes", ErrCorrupt, len(b))
	}
	if b[0] != Format {
		return e, fmt.Errorf("%w: unknown format 0x%02x", ErrCorrupt, b[0])
	}
	e.Flags = b[1]
	if e.Flags&^knownFlags != 0 {
		return e, fmt.Errorf("%w: unknown flags 0x%02x", ErrCorrupt, e.Flags)
	}
	e.TypeID = binary.LittleEndian.Uint32(b[2:6])
	rest := b[6:]
	var fields [4]uint64
	for i := range fields {
		v, n := binary.Uvarint(rest)
		if n <= 0 || v > 1<<62 {
			return e, fmt.Errorf("%w: bad header", ErrCorrupt)
		}
		fields[i], rest = v, rest[n:]
	}
	e.CreatedMs, e.FreshMs, e.LoadMicros = int64(fields[0]), int64(fields[1]), int64(fields[2])
	ntags := fields[3]
	if ntags > MaxTags {
		return e, fmt.Errorf("%w: %d tags", ErrCorrupt, ntags)
	}
	if ntags > 0 {
		e.Tags = make([]Tag, ntags)
		for i := range e.Tags {
			var name, token string
			if name, rest = readString(rest, MaxTagLen, knownNames); name == "" {
				return e, fmt.Errorf("%w: bad tag", ErrCorrupt)
			}
			if token, rest = readString(rest, MaxTokenLen, knownTokens); token == "" {
				return e, fmt.Errorf("%w: bad tag token", ErrCorrupt)
			}
			e.Tags[i] = Tag{name, token}
		}
	}
	e.Payload = rest
	if e.Flags&FlagS2 != 0 {
		n, err := s2.DecodedLen(rest)
		if err != nil || n > MaxDecodedBytes {
			return e, fmt.Errorf("%w: bad compressed payload", ErrCorrupt)
		}
		if e.Payload, err = s2.Decode(nil, rest); err != nil {
			return e, fmt.Errorf("%w: bad compressed payload", ErrCorrupt)
		}
		e.Flags &^= FlagS2 // the decoded payload is plain
	}
	return e, nil
}

// readString reads a uvarint-length-prefixed string of 1..max bytes, as
// known's equal string where it holds one; it returns "" when b does not
// hold one.
func readString(b []byte, max int, known []string) (string, []byte) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n == 0 || n > uint64(max) || n > uint64(len(b)-k) {
		return "", b
	}
	s, rest := b[k:k+int(n)], b[k+int(n):]
	for _, kn := range known {
		if string(s) == kn { // compared in place: no string is made
			return kn, rest
		}
	}
	return string(s), rest
}

// MarkStaleScript soft-invalidates one entry (KEYS[1]) and revokes its
// lease (KEYS[2]): it sets FlagStale in the stored bytes, in place, so that
// readers keep the value while a load that began before cannot write its
// older one. A negative entry, or bytes that are not an envelope, are
// deleted instead. It answers 1 when the entry was marked, 0 when deleted.
var MarkStaleScript = `
redis.call('DEL', KEYS[2])
if redis.call('TYPE', KEYS[1]).ok ~= 'string' then
  redis.call('DEL', KEYS[1])
  return 0
end
local v = redis.call('GET', KEYS[1])
local f = string.byte(v, 2)
if string.byte(v, 1) ~= ` + strconv.Itoa(int(Format)) + ` or not f or math.floor(f / ` + strconv.Itoa(int(FlagNegative)) + `) % 2 == 1 then
  redis.call('DEL', KEYS[1])
  return 0
end
if math.floor(f / ` + strconv.Itoa(int(FlagStale)) + `) % 2 == 0 then
  redis.call('SETRANGE', KEYS[1], 1, string.char(f + ` + strconv.Itoa(int(FlagStale)) + `))
end
return 1`
