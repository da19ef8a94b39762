package aside

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

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
