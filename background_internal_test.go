package aside

import "testing"

// TestBacklogWaitsForEarlierWritesOnly: a Wait waits for every write begun
// before it — also those of an earlier Wait that gave up — and not for
// those that began after (which would keep a busy Store's Wait from ever
// returning).
func TestBacklogWaitsForEarlierWritesOnly(t *testing.T) {
	var b backlog
	if len(b.seal()) != 0 {
		t.Fatal("an empty backlog has something to wait for")
	}
	early := b.begin()
	first := b.seal() // a Wait that gives up
	late := b.begin()
	second := b.seal()
	if len(first) != 1 || len(second) != 2 {
		t.Fatalf("waits on %d, then %d epochs; want 1, then 2 (the given-up one too)", len(first), len(second))
	}
	after := b.begin()
	b.end(early)
	if !closed(first[0]) || closed(second[1]) {
		t.Fatal("the early epoch should be done, the late one not")
	}
	b.end(late)
	if !closed(second[1]) {
		t.Fatal("the late epoch is not done after its write ended, with a later write running")
	}
	if third := b.seal(); len(third) != 1 || closed(third[0]) {
		t.Fatal("the write begun after the second Wait is not waited for by the third")
	}
	b.end(after)
	if len(b.seal()) != 0 {
		t.Fatal("something left to wait for after every write ended")
	}
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
