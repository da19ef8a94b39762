package asidetest_test

import (
	"context"
	"errors"
	"maps"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/asidecache/aside"
	"github.com/asidecache/aside/asidetest"
)

// An orders service as a user writes it on aside, and its tests as first
// written: the first hour of a new user, kept as a test of this package.

type order struct {
	ID        string
	Customer  string
	Total     int
	CreatedAt time.Time // the database hands it out in UTC
	Items     []string
}

// ordersRepo is the database: it counts its calls.
type ordersRepo struct {
	mu    sync.Mutex
	rows  map[string]order
	calls int
}

func (r *ordersRepo) order(id string) (order, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	o, ok := r.rows[id]
	if !ok {
		return order{}, aside.ErrNotFound
	}
	o.Items = slices.Clone(o.Items)
	return o, nil
}

func (r *ordersRepo) orders(ids []string) map[string]order {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	out := map[string]order{}
	for _, id := range ids {
		if o, ok := r.rows[id]; ok {
			out[id] = o
		}
	}
	return out
}

func (r *ordersRepo) ofCustomer(c string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	var ids []string
	for id, o := range r.rows {
		if o.Customer == c {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

func (r *ordersRepo) save(o order) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rows[o.ID] = o
}

func (r *ordersRepo) callsMade() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls
}

type ordersService struct {
	store  *aside.Store
	orders *aside.Cache[order]
	lists  *aside.Cache[[]string]
	repo   *ordersRepo
}

var ordersProfile = aside.Profile{Name: "orders", TTL: time.Minute, NegativeTTL: 10 * time.Second, LoadTimeout: time.Second}

func newOrdersService(t *testing.T) (*ordersService, *asidetest.Redis) {
	store, fake := asidetest.New(t, aside.WithProfiles(ordersProfile))
	orders, err := aside.New[order](store, "order", aside.WithProfile("orders"))
	if err != nil {
		t.Fatal(err)
	}
	lists, err := aside.New[[]string](store, "customer-orders", aside.WithProfile("orders"))
	if err != nil {
		t.Fatal(err)
	}
	created := time.Date(2026, 12, 1, 9, 30, 0, 0, time.UTC)
	repo := &ordersRepo{rows: map[string]order{
		"o1": {ID: "o1", Customer: "c1", Total: 10, CreatedAt: created, Items: []string{"a"}},
		"o2": {ID: "o2", Customer: "c1", Total: 20, CreatedAt: created, Items: []string{}},
		"o3": {ID: "o3", Customer: "c 2", Total: 30, CreatedAt: created},
	}}
	return &ordersService{store: store, orders: orders, lists: lists, repo: repo}, fake
}

func (s *ordersService) order(ctx context.Context, id string) (order, error) {
	return s.orders.Get(ctx, id, func(context.Context) (order, error) { return s.repo.order(id) })
}

func (s *ordersService) batch(ctx context.Context, ids []string) (map[string]order, error) {
	return s.orders.GetMany(ctx, ids, func(_ context.Context, missing []string) (map[string]order, error) {
		return s.repo.orders(missing), nil
	})
}

func (s *ordersService) ofCustomer(ctx context.Context, c string) ([]string, error) {
	return s.lists.Get(ctx, c, func(context.Context) ([]string, error) { return s.repo.ofCustomer(c), nil },
		aside.Tags("customer:"+c))
}

func (s *ordersService) update(ctx context.Context, o order) error {
	s.repo.save(o) // the transaction has committed
	err := errors.Join(s.orders.Invalidate(ctx, o.ID), s.store.InvalidateTags(ctx, "customer:"+o.Customer))
	if errors.Is(err, aside.ErrQueued) {
		return nil // committed; the invalidation is replayed before Redis is read again
	}
	return err
}

func TestOrdersServiceAsFirstWritten(t *testing.T) {
	ctx := context.Background()
	t.Run("a hit returns what the miss returned, and an entry lives its TTL", func(t *testing.T) {
		svc, fake := newOrdersService(t)
		first, err := svc.order(ctx, "o1")
		if err != nil {
			t.Fatal(err)
		}
		fake.Advance(30 * time.Second)
		second, err := svc.order(ctx, "o1")
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(first, second) {
			t.Errorf("miss %+v, hit %+v", first, second)
		}
		if n := svc.repo.callsMade(); n != 1 {
			t.Errorf("%d database calls, want 1", n)
		}
		fake.Advance(31 * time.Second) // past the TTL
		if _, err := svc.order(ctx, "o1"); err != nil || svc.repo.callsMade() != 2 {
			t.Errorf("after the TTL: %v, %d database calls; want a reload", err, svc.repo.callsMade())
		}
	})
	t.Run("a not-found is cached for the negative TTL", func(t *testing.T) {
		svc, fake := newOrdersService(t)
		for _, step := range []struct {
			advance time.Duration
			calls   int
		}{{0, 1}, {5 * time.Second, 1}, {6 * time.Second, 2}} {
			fake.Advance(step.advance)
			if _, err := svc.order(ctx, "nope"); !errors.Is(err, aside.ErrNotFound) {
				t.Fatalf("order(nope) = %v, want ErrNotFound", err)
			}
			if n := svc.repo.callsMade(); n != step.calls {
				t.Errorf("after %v more: %d database calls, want %d", step.advance, n, step.calls)
			}
		}
	})
	t.Run("an update is read back at once, in the order and in its customer's list", func(t *testing.T) {
		svc, _ := newOrdersService(t)
		if _, err := svc.order(ctx, "o3"); err != nil {
			t.Fatal(err)
		}
		if ids, err := svc.ofCustomer(ctx, "c1"); err != nil || !slices.Equal(ids, []string{"o1", "o2"}) {
			t.Fatalf("c1's orders = %v, %v", ids, err)
		}
		moved := order{ID: "o3", Customer: "c1", Total: 31, CreatedAt: time.Now().UTC()}
		if err := svc.update(ctx, moved); err != nil {
			t.Fatal(err)
		}
		if o, err := svc.order(ctx, "o3"); err != nil || o.Total != 31 {
			t.Errorf("o3 after the update = %+v, %v", o, err)
		}
		if ids, err := svc.ofCustomer(ctx, "c1"); err != nil || !slices.Equal(ids, []string{"o1", "o2", "o3"}) {
			t.Errorf("c1's orders after the update = %v, %v", ids, err)
		}
	})
	t.Run("a batch asks the database once, for exactly what is missing", func(t *testing.T) {
		svc, _ := newOrdersService(t)
		if _, err := svc.order(ctx, "o1"); err != nil {
			t.Fatal(err)
		}
		got, err := svc.batch(ctx, []string{"o1", "o2", "o3", "nope"})
		if err != nil {
			t.Fatal(err)
		}
		if ids := slices.Sorted(maps.Keys(got)); !slices.Equal(ids, []string{"o1", "o2", "o3"}) || svc.repo.callsMade() != 2 {
			t.Errorf("batch = %v with %d database calls; want o1–o3, 2 calls", ids, svc.repo.callsMade())
		}
	})
	t.Run("fifty readers of a cold order cost one database call", func(t *testing.T) {
		svc, _ := newOrdersService(t)
		var wg sync.WaitGroup
		for range 50 {
			wg.Go(func() {
				if _, err := svc.order(ctx, "o2"); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		s := svc.orders.Stats()
		if svc.repo.callsMade() != 1 || s.Loads != 1 || s.Misses+s.Waited+s.Hits+s.L1Hits != 50 || s.Waited+s.Hits < 49 {
			t.Errorf("%d database calls, stats %+v; want 1 call, and the other 49 reads waited or hit", svc.repo.callsMade(), s)
		}
	})
}
