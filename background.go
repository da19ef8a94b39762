package aside

import (
	"context"
	"slices"
	"sync"
)

// A caller that loaded a value gets it as soon as its loader returns: the
// compare-and-set fill that stores it for everyone else follows on the
// flight's goroutine, one round trip later. That round trip is the one a
// miss would otherwise pay beyond the floor's GET-load-SET. Nothing about
// the protocol changes: the lease stays held until the fill lands, so a
// read in between (of this process or another) finds it and waits for that
// fill, and an invalidation in between revokes it. What changes is only
// that "Get returned" no longer means "the entry is in Redis": Wait does.

// backlog counts the writes a Store has started in the background — fills,
// refreshes, lease releases — by epoch, so that Wait waits for those begun
// before it and not for those that keep starting after it.
type backlog struct {
	mu     sync.Mutex // protects cur, sealed and every epoch's fields
	cur    *epoch     // the epoch new writes join; nil until one begins
	sealed []*epoch   // earlier epochs, closed by a Wait, whose writes still run
}

type epoch struct {
	n      int           // writes of this epoch still running
	sealed bool          // a Wait closed this epoch: no write joins it any more
	done   chan struct{} // closed when sealed and n is 0
}

func (b *backlog) begin() *epoch {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cur == nil {
		b.cur = &epoch{done: make(chan struct{})}
	}
	b.cur.n++
	return b.cur
}

func (b *backlog) end(e *epoch) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e.n--
	if e.n == 0 && e.sealed {
		close(e.done)
		b.sealed = slices.DeleteFunc(b.sealed, func(s *epoch) bool { return s == e })
	}
}

// seal closes the current epoch and returns what is closed when each write
// begun so far is done: one channel per epoch still running (a Wait that
// gave up leaves its epoch to the next).
func (b *backlog) seal() []<-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if e := b.cur; e != nil {
		b.cur, e.sealed = nil, true
		if e.n == 0 {
			close(e.done)
		} else {
			b.sealed = append(b.sealed, e)
		}
	}
	out := make([]<-chan struct{}, len(b.sealed))
	for i, e := range b.sealed {
		out[i] = e.done
	}
	return out
}

// goWrite runs a background write on a tracked goroutine (see goTracked)
// that Wait waits for.
func (s *Store) goWrite(fn func()) bool {
	e := s.writes.begin()
	started := s.goTracked(func() {
		defer s.writes.end(e)
		fn()
	})
	if !started {
		s.writes.end(e)
	}
	return started
}

// Wait returns when every write this Store began in the background before
// the call has reached Redis or failed — the fills of values that Get and
// GetMany have already returned, refreshes, lease releases — or when ctx
// ends, with its error. A loaded value is returned to its caller as soon
// as the loader returns, and stored one round trip later; a read meanwhile
// finds the lease and waits for that fill, so no caller needs Wait for its
// reads to be right. Call it where something looks into Redis right after
// a Get: a test, a tool, a program about to exit without Close (Close
// waits as well).
func (s *Store) Wait(ctx context.Context) error {
	for _, done := range s.writes.seal() {
		select {
		case <-done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
