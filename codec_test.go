package aside

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestEnvelopeRoundTrip(t *testing.T) {
	big := []byte(strings.Repeat("compressible ", 200))
	tests := []struct {
		name          string
		in            envelope
		compressAbove int
		wantS2        bool
	}{
		{"small", envelope{typeID: 7, createdMs: 1, freshMs: 2, loadMicros: 3, payload: []byte("hi")}, 1024, false},
		{"tags", envelope{typeID: 7, tags: []tagToken{{"a", "t1"}, {"b", "t2"}}, payload: []byte("x")}, 0, false},
		{"negative", envelope{flags: flagNegative, typeID: 1}, 0, false},
		{"compressed", envelope{typeID: 9, payload: big}, 1024, true},
		{"compression off", envelope{typeID: 9, payload: big}, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := encodeEnvelope(tt.in, tt.compressAbove)
			got, err := decodeEnvelope(b, tagSnap{})
			if err != nil {
				t.Fatal(err)
			}
			if (b[1]&flagS2 != 0) != tt.wantS2 {
				t.Errorf("compressed = %v, want %v (%d bytes stored)", b[1]&flagS2 != 0, tt.wantS2, len(b))
			}
			if got.typeID != tt.in.typeID || got.createdMs != tt.in.createdMs || got.freshMs != tt.in.freshMs ||
				got.loadMicros != tt.in.loadMicros || fmt.Sprint(got.tags) != fmt.Sprint(tt.in.tags) || !bytes.Equal(got.payload, tt.in.payload) ||
				got.negative() != tt.in.negative() {
				t.Errorf("round trip = %+v, want %+v", got, tt.in)
			}
		})
	}
}

func TestDecodeEnvelopeRejectsBadInput(t *testing.T) {
	good := encodeEnvelope(envelope{typeID: 1, tags: []tagToken{{"category:1", "0123456789abcdef"}}, payload: []byte("payload")}, 0)
	comp := encodeEnvelope(envelope{typeID: 1, payload: []byte(strings.Repeat("a", 4096))}, 1)
	tests := map[string][]byte{
		"empty":             nil,
		"short":             good[:3],
		"unknown format":    append([]byte{0x00}, good[1:]...),
		"unknown flags":     append([]byte{envelopeV1, 0x80}, good[2:]...),
		"truncated header":  good[:7],
		"truncated tags":    good[:12],
		"bad compression":   comp[:len(comp)-10],
		"compressed bomb":   append(append([]byte{}, comp[:10]...), 0xff, 0xff, 0xff, 0xff, 0x7f),
		"huge tag count":    append(append([]byte{}, good[:9]...), 0xff, 0xff, 0x03),
		"tag name too long": append(append([]byte{}, good[:10]...), 0xff, 0x7f),
		"empty tag token":   append(append([]byte{}, good[:10]...), 1, 'a', 0),
		"oversized varints": append(append([]byte{}, good[:6]...), bytes.Repeat([]byte{0xff}, 11)...),
	}
	for name, b := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := decodeEnvelope(b, tagSnap{}); !errors.Is(err, errCorrupt) {
				t.Errorf("decodeEnvelope = %v, want errCorrupt", err)
			}
		})
	}
}

// FuzzDecodeEnvelope: no input panics, whatever decodes re-encodes to an
// envelope that decodes to the same fields, and a reader's known tags and
// tokens change nothing that is decoded (they only spare copies).
func FuzzDecodeEnvelope(f *testing.F) {
	f.Add(encodeEnvelope(envelope{typeID: 1, createdMs: 5, payload: []byte("p")}, 0))
	f.Add(encodeEnvelope(envelope{typeID: 2, tags: []tagToken{{"x", "y"}}, payload: bytes.Repeat([]byte("ab"), 600)}, 100))
	f.Add([]byte{envelopeV1, flagS2, 0, 0, 0, 0, 0, 0, 0, 0, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := decodeEnvelope(b, tagSnap{})
		known, kerr := decodeEnvelope(b, tagSnap{names: []string{"x", "a", "b"}, tokens: []string{"y", "t1", ""}})
		if (err == nil) != (kerr == nil) || fmt.Sprint(known.tags) != fmt.Sprint(e.tags) || !bytes.Equal(known.payload, e.payload) {
			t.Fatalf("known tags changed the decoding: %v / %v", err, kerr)
		}
		if err != nil {
			return
		}
		again, err := decodeEnvelope(encodeEnvelope(e, 0), tagSnap{})
		if err != nil || again.typeID != e.typeID || !bytes.Equal(again.payload, e.payload) || fmt.Sprint(again.tags) != fmt.Sprint(e.tags) {
			t.Fatalf("re-encoding changed the envelope: %v", err)
		}
	})
}

// The default codec encodes into a reused buffer: an entry must own its
// bytes, or the next encode would rewrite an entry still on its way to
// Redis (a fill is sent after its caller has returned).
func TestEncodedEntryOwnsItsBytes(t *testing.T) {
	for _, compressAbove := range []int{0, 16} { // copied, and compressed
		c := &Cache[string]{codec: msgpackCodec{}, typeID: 1, profile: Profile{CompressAbove: compressAbove}}
		first, err := c.encode(strings.Repeat("a", 300), time.Now(), time.Minute, 0, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		kept := bytes.Clone(first)
		for i := range 50 { // enough to be handed the pooled buffer again
			if _, err := c.encode(strings.Repeat("b", 300+i), time.Now(), time.Minute, 0, nil, nil); err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(first, kept) {
			t.Fatalf("compressAbove=%d: a later encode changed an entry already encoded", compressAbove)
		}
	}
}
