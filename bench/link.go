package main

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/asidecache/aside/asidetest"
)

const missTitle = "Miss + fill (instant loader, a new key each time)"

// linkMisses runs the miss table again through a proxy that delays every
// request, as a network between a service and its Redis does. On loopback
// a round trip costs mostly the client's and the server's CPU; over a
// network it costs the wire, and what a miss costs is how many round trips
// it makes.
func linkMisses(ctx context.Context) {
	p, err := asidetest.ListenProxy(*addr)
	must(err)
	defer p.Close()
	p.SetLatency(*link)
	a := p.Addr()
	subs := []subject{
		cacheAside("floor (GET/SET + msgpack)", newClient(a), prefix+":linkfloor:"),
		asideSubject("aside, over the link", newClient(a), false),
		asideSubject("aside + 2 tags, over the link", newClient(a), true),
		goRedisCache("go-redis/cache, over the link", newClient(a), false),
	}
	title := fmt.Sprintf("Miss + fill over a slower link (a proxy delays each request by %v: one round trip %s here)", *link, dur(roundTrip(ctx, a)))
	misses(ctx, title, subs)
	for _, s := range subs {
		if s.close != nil {
			s.close()
		}
	}
}

// roundTrip is the median time of a PING to a.
func roundTrip(ctx context.Context, a string) float64 {
	rdb := newClient(a)
	defer rdb.Close()
	var ns []float64
	for range 21 {
		start := time.Now()
		must(rdb.Ping(ctx).Err())
		ns = append(ns, float64(time.Since(start).Nanoseconds()))
	}
	slices.Sort(ns)
	return ns[len(ns)/2]
}
