package aside

import (
	"bytes"
	"encoding"
	"errors"
	"fmt"
	"hash/fnv"
	"reflect"
	"sync"
	"time"

	"github.com/asidecache/aside/internal/envelope"
	"github.com/vmihailenco/msgpack/v5"
)

// Codec turns values into bytes and back. It must be safe for concurrent use.
// The default is msgpack; plug in another with [WithCodec].
type Codec interface {
	Marshal(v any) ([]byte, error)
	Unmarshal(data []byte, v any) error
}

type msgpackCodec struct{}

func (msgpackCodec) Marshal(v any) ([]byte, error)      { return msgpack.Marshal(v) }
func (msgpackCodec) Unmarshal(data []byte, v any) error { return msgpack.Unmarshal(data, v) }

// payloadBuf is a reused buffer the default codec encodes a payload into.
// The envelope copies the payload anyway, so a fresh buffer per encode —
// which msgpack.Marshal grows through every power of two — buys nothing.
type payloadBuf struct{ bytes.Buffer }

var payloadBufs = sync.Pool{New: func() any { return new(payloadBuf) }}

// maxPooledPayload: a buffer grown past this by a rare large value is
// dropped rather than kept alive in the pool.
const maxPooledPayload = 64 << 10

// marshalPayload encodes v with codec. With the default codec the bytes
// are in a pooled buffer, pb, valid until pb.release(); with any other, pb
// is nil.
func marshalPayload(codec Codec, v any) (payload []byte, pb *payloadBuf, err error) {
	if _, ok := codec.(msgpackCodec); !ok {
		payload, err = codec.Marshal(v)
		return payload, nil, err
	}
	pb = payloadBufs.Get().(*payloadBuf)
	pb.Reset()
	enc := msgpack.GetEncoder()
	enc.Reset(pb)
	err = enc.Encode(v) // as msgpack.Marshal encodes: same encoder, same settings
	msgpack.PutEncoder(enc)
	return pb.Bytes(), pb, err
}

// release gives pb back to the pool once its bytes are no longer used.
func (pb *payloadBuf) release() {
	if pb != nil && pb.Cap() <= maxPooledPayload {
		payloadBufs.Put(pb)
	}
}

// tagToken is a tag and the token it had when the entry's load began.
type tagToken = envelope.Tag

// typeFingerprint identifies T in every envelope, so that an entry written by
// a cache of another type under the same name is a decode miss, never a value
// silently decoded into the wrong shape. Renaming T has the effect of a
// version bump.
func typeFingerprint[T any]() uint32 {
	h := fnv.New32a()
	h.Write([]byte(reflect.TypeFor[T]().String()))
	return h.Sum32()
}

// encode encodes v as an entry. With served not nil, it also decodes the
// payload into *served: the value as every hit on the entry will return
// it (see [Cache.Get]).
func (c *Cache[T]) encode(v T, created time.Time, fresh, loadTime time.Duration, tags []tagToken, served *T) ([]byte, error) {
	payload, pb, err := marshalPayload(c.codec, v)
	defer pb.release() // encodeEnvelope copies the payload; the default codec's decoder copies what it keeps
	if err != nil {
		return nil, opErr("encode", err)
	}
	if len(payload) > envelope.MaxDecodedBytes { // stored, it could never be read back
		return nil, fmt.Errorf("%w: a payload of %d bytes exceeds the %d MiB any entry may decode to", errOversize, len(payload), envelope.MaxDecodedBytes>>20)
	}
	if served != nil {
		if err := c.codec.Unmarshal(payload, served); err != nil {
			return nil, fmt.Errorf("aside: encode: the codec cannot decode what it encoded, so no hit could serve it: %w", err)
		}
	}
	return envelope.Encode(envelope.Envelope{
		TypeID:     c.typeID,
		CreatedMs:  created.UnixMilli(),
		FreshMs:    created.Add(fresh).UnixMilli(),
		LoadMicros: loadTime.Microseconds(),
		Tags:       tags,
		Payload:    payload,
	}, c.profile.CompressAbove), nil
}

// encodeForFill encodes a loaded value, and returns it as a hit on the
// entry will (decoded from the bytes stored), for the callers of the load:
// a miss returns what a hit would. A value that cannot be stored (encoding
// error, over MaxEntryBytes) is counted and reported, not returned: the
// callers then have the loader's value.
func (c *Cache[T]) encodeForFill(v T, created time.Time, fresh, took time.Duration, tags []tagToken) (b []byte, served T, ok bool) {
	b, err := c.encode(v, created, fresh, took, tags, &served)
	if err == nil {
		err = c.checkSize(b)
	}
	switch {
	case errors.Is(err, errOversize):
		c.stats.oversize.Add(1)
		c.store.emit(Event{Kind: EventOversize, Cache: c.name, Err: err})
		return nil, v, false
	case err != nil:
		c.stats.encodeErrors.Add(1)
		c.store.emit(Event{Kind: EventEncodeError, Cache: c.name, Err: err})
		return nil, v, false
	}
	if variantOn(c.hooks, vRawMissValue) {
		served = v // the broken variant: the miss returns the loader's value
	}
	return b, served, true
}

// checkSize refuses an entry over the profile's MaxEntryBytes.
func (c *Cache[T]) checkSize(b []byte) error {
	if max := c.profile.MaxEntryBytes; max > 0 && len(b) > max {
		return fmt.Errorf("%w: entry of %d bytes exceeds MaxEntryBytes %d", errOversize, len(b), max)
	}
	return nil
}

// checkEncodable rejects, at construction, value types that msgpack cannot
// encode (functions, channels, unsafe pointers), so the mistake shows up in
// New rather than as an error on every miss.
func checkEncodable(t reflect.Type) error {
	seen := map[reflect.Type]bool{}
	var walk func(t reflect.Type, path string) error
	walk = func(t reflect.Type, path string) error {
		if seen[t] {
			return nil
		}
		seen[t] = true
		switch t.Kind() {
		case reflect.Func, reflect.Chan, reflect.UnsafePointer:
			return fmt.Errorf("aside: type %v cannot be encoded with msgpack: %s is a %v", t, path, t.Kind())
		case reflect.Pointer, reflect.Slice, reflect.Array:
			return walk(t.Elem(), path+"[]")
		case reflect.Map:
			if err := walk(t.Key(), path+" key"); err != nil {
				return err
			}
			return walk(t.Elem(), path+" value")
		case reflect.Struct:
			if encodesItself(t) {
				return nil
			}
			encoded := 0
			for i := range t.NumField() {
				f := t.Field(i)
				if !f.IsExported() || f.Tag.Get("msgpack") == "-" {
					continue
				}
				encoded++
				if err := walk(f.Type, path+"."+f.Name); err != nil {
					return err
				}
			}
			if encoded == 0 && t.NumField() > 0 {
				// msgpack skips unexported fields: every value would be
				// cached as the zero value, and served as if it were data.
				return fmt.Errorf("aside: type %v cannot be cached: %s has no exported fields, so msgpack would store it empty (export a field, implement msgpack.CustomEncoder/CustomDecoder, or give the cache a Codec with WithCodec)", t, path)
			}
		}
		return nil
	}
	return walk(t, "value")
}

// encodesItself reports whether msgpack encodes values of t through a
// method of t's own rather than field by field.
func encodesItself(t reflect.Type) bool {
	for _, m := range []reflect.Type{
		reflect.TypeFor[msgpack.CustomEncoder](), reflect.TypeFor[msgpack.Marshaler](),
		reflect.TypeFor[encoding.BinaryMarshaler](), reflect.TypeFor[encoding.TextMarshaler](),
	} {
		if t.Implements(m) || reflect.PointerTo(t).Implements(m) {
			return true
		}
	}
	return false
}
