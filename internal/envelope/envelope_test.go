package envelope

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

func TestEnvelopeRoundTrip(t *testing.T) {
	big := []byte(strings.Repeat("compressible ", 200))
	tests := []struct {
		name          string
		in            Envelope
		compressAbove int
		wantS2        bool
	}{
		{"small", Envelope{TypeID: 7, CreatedMs: 1, FreshMs: 2, LoadMicros: 3, Payload: []byte("hi")}, 1024, false},
		{"tags", Envelope{TypeID: 7, Tags: []Tag{{"a", "t1"}, {"b", "t2"}}, Payload: []byte("x")}, 0, false},
		{"negative", Envelope{Flags: FlagNegative, TypeID: 1}, 0, false},
		{"compressed", Envelope{TypeID: 9, Payload: big}, 1024, true},
		{"compression off", Envelope{TypeID: 9, Payload: big}, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := Encode(tt.in, tt.compressAbove)
			got, err := Decode(b, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			if (b[1]&FlagS2 != 0) != tt.wantS2 {
				t.Errorf("compressed = %v, want %v (%d bytes stored)", b[1]&FlagS2 != 0, tt.wantS2, len(b))
			}
			if got.TypeID != tt.in.TypeID || got.CreatedMs != tt.in.CreatedMs || got.FreshMs != tt.in.FreshMs ||
				got.LoadMicros != tt.in.LoadMicros || fmt.Sprint(got.Tags) != fmt.Sprint(tt.in.Tags) || !bytes.Equal(got.Payload, tt.in.Payload) ||
				got.Negative() != tt.in.Negative() {
				t.Errorf("round trip = %+v, want %+v", got, tt.in)
			}
		})
	}
}

func TestDecodeEnvelopeRejectsBadInput(t *testing.T) {
	good := Encode(Envelope{TypeID: 1, Tags: []Tag{{"category:1", "0123456789abcdef"}}, Payload: []byte("payload")}, 0)
	comp := Encode(Envelope{TypeID: 1, Payload: []byte(strings.Repeat("a", 4096))}, 1)
	tests := map[string][]byte{
		"empty":             nil,
		"short":             good[:3],
		"unknown format":    append([]byte{0x00}, good[1:]...),
		"unknown flags":     append([]byte{Format, 0x80}, good[2:]...),
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
			if _, err := Decode(b, nil, nil); !errors.Is(err, ErrCorrupt) {
				t.Errorf("Decode = %v, want ErrCorrupt", err)
			}
		})
	}
}

// FuzzDecodeEnvelope: no input panics, whatever decodes re-encodes to an
// envelope that decodes to the same fields, and a reader's known tags and
// tokens change nothing that is decoded (they only spare copies).
func FuzzDecodeEnvelope(f *testing.F) {
	f.Add(Encode(Envelope{TypeID: 1, CreatedMs: 5, Payload: []byte("p")}, 0))
	f.Add(Encode(Envelope{TypeID: 2, Tags: []Tag{{"x", "y"}}, Payload: bytes.Repeat([]byte("ab"), 600)}, 100))
	f.Add([]byte{Format, FlagS2, 0, 0, 0, 0, 0, 0, 0, 0, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := Decode(b, nil, nil)
		known, kerr := Decode(b, []string{"x", "a", "b"}, []string{"y", "t1", ""})
		if (err == nil) != (kerr == nil) || fmt.Sprint(known.Tags) != fmt.Sprint(e.Tags) || !bytes.Equal(known.Payload, e.Payload) {
			t.Fatalf("known tags changed the decoding: %v / %v", err, kerr)
		}
		if err != nil {
			return
		}
		again, err := Decode(Encode(e, 0), nil, nil)
		if err != nil || again.TypeID != e.TypeID || !bytes.Equal(again.Payload, e.Payload) || fmt.Sprint(again.Tags) != fmt.Sprint(e.Tags) {
			t.Fatalf("re-encoding changed the envelope: %v", err)
		}
	})
}

// TestMarkStaleScriptEditsTheLayout runs the script that edits stored bytes
// in place against entries of this package's own encoding: a value is
// marked stale and stays decodable with its payload, a negative entry and
// foreign bytes are deleted, and every call revokes the lease.
func TestMarkStaleScriptEditsTheLayout(t *testing.T) {
	srv := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), DisableIdentity: true})
	defer rdb.Close()
	ctx := context.Background()
	script := redis.NewScript(MarkStaleScript)
	value := Encode(Envelope{TypeID: 3, Tags: []Tag{{"t", "0011"}}, Payload: bytes.Repeat([]byte("v"), 300)}, 16)
	for _, tc := range []struct {
		name   string
		stored []byte
		marked bool
	}{
		{"value", value, true},
		{"negative", Encode(Envelope{Flags: FlagNegative, TypeID: 3}, 0), false},
		{"foreign", []byte("not an envelope"), false},
	} {
		srv.Set("e", string(tc.stored))
		srv.Set("l", "lease")
		n, err := script.Run(ctx, rdb, []string{"e", "l"}).Int()
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if srv.Exists("l") {
			t.Errorf("%s: lease kept", tc.name)
		}
		if (n == 1) != tc.marked {
			t.Errorf("%s: script answered %d", tc.name, n)
		}
		if !tc.marked {
			if srv.Exists("e") {
				t.Errorf("%s: entry kept", tc.name)
			}
			continue
		}
		got, _ := srv.Get("e")
		e, err := Decode([]byte(got), nil, nil)
		if err != nil || !e.Stale() || e.TypeID != 3 || !bytes.Equal(e.Payload, bytes.Repeat([]byte("v"), 300)) || !e.HasTag("t") {
			t.Errorf("%s: after the script: %+v, %v", tc.name, e, err)
		}
		if _, err := script.Run(ctx, rdb, []string{"e", "l"}).Int(); err != nil { // marking twice changes nothing
			t.Fatal(err)
		}
		if again, _ := srv.Get("e"); again != got {
			t.Errorf("%s: marked twice, the bytes changed", tc.name)
		}
	}
}
