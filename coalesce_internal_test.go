package aside

import (
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
)

// TestDistinctKeysOfABatch: a batch reads each key once, and every reader's
// key maps back to its own answer — for batches small (searched) and large
// (mapped), with and without repeats.
func TestDistinctKeysOfABatch(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 2, 5, 16, 17, 40, 300} {
		for _, span := range []int{1, 3, n + 1} {
			keys := make([]string, n)
			for i := range keys {
				keys[i] = "k" + strconv.Itoa(r.IntN(span))
			}
			uniq, at := distinct(keys)
			seen := map[string]bool{}
			for _, k := range uniq {
				if seen[k] {
					t.Fatalf("n=%d span=%d: %q twice in %v", n, span, k, uniq)
				}
				seen[k] = true
			}
			for _, k := range keys {
				if !seen[k] {
					t.Fatalf("n=%d span=%d: %q not read", n, span, k)
				}
			}
			if at == nil {
				if !slices.Equal(uniq, keys) {
					t.Fatalf("n=%d span=%d: no repeats reported, but %v read for %v", n, span, uniq, keys)
				}
				continue
			}
			for i, k := range keys {
				if uniq[at[i]] != k {
					t.Fatalf("n=%d span=%d: reader %d of %q takes the answer for %q", n, span, i, k, uniq[at[i]])
				}
			}
		}
	}
}
