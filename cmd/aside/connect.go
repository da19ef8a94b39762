package main

import (
	"crypto/tls"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// target is where the command connects: a URL like redis-cli's -u, with
// several comma-separated hosts for a Cluster's seeds or Sentinels.
type target struct {
	url      string
	cluster  bool   // -cluster: the hosts are Cluster nodes
	sentinel string // -sentinel MASTER: the hosts are Sentinels
	timeout  time.Duration
}

// connect builds a client for t. It dials nothing: the first command does.
func (t target) connect() (redis.UniversalClient, error) {
	u, err := url.Parse(t.url)
	if err != nil {
		return nil, fmt.Errorf("aside: -u %q: %w", t.url, err)
	}
	var tlsConfig *tls.Config
	switch u.Scheme {
	case "redis":
	case "rediss":
		tlsConfig = &tls.Config{ServerName: strings.Split(u.Hostname(), ",")[0], MinVersion: tls.VersionTLS12}
	default:
		return nil, fmt.Errorf("aside: -u %q: scheme %q, want redis:// or rediss://", t.url, u.Scheme)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("aside: -u %q: no host", t.url)
	}
	hosts := strings.Split(u.Host, ",")
	for i, h := range hosts {
		if !strings.Contains(h, ":") {
			hosts[i] = h + ":6379"
		}
	}
	user := u.User.Username()
	pass, _ := u.User.Password()
	db := 0
	if p := strings.Trim(u.Path, "/"); p != "" {
		if db, err = strconv.Atoi(p); err != nil || db < 0 {
			return nil, fmt.Errorf("aside: -u %q: database %q is not a number", t.url, p)
		}
	}
	if t.cluster && t.sentinel != "" {
		return nil, fmt.Errorf("aside: -cluster and -sentinel exclude each other")
	}
	// Each call is bounded by the command's -timeout through its context.
	switch {
	case t.cluster:
		if db != 0 {
			return nil, fmt.Errorf("aside: -u %q: a Cluster has database 0 only", t.url)
		}
		return redis.NewClusterClient(&redis.ClusterOptions{Addrs: hosts, Username: user, Password: pass, TLSConfig: tlsConfig,
			ContextTimeoutEnabled: true, DialTimeout: t.timeout, MaxRetries: 1, DisableIdentity: true}), nil
	case t.sentinel != "":
		return redis.NewFailoverClient(&redis.FailoverOptions{MasterName: t.sentinel, SentinelAddrs: hosts, Username: user, Password: pass,
			DB: db, TLSConfig: tlsConfig, ContextTimeoutEnabled: true, DialTimeout: t.timeout, MaxRetries: 1, DisableIdentity: true}), nil
	case len(hosts) > 1:
		return nil, fmt.Errorf("aside: -u %q names %d hosts: pass -cluster (Cluster nodes) or -sentinel MASTER (Sentinels)", t.url, len(hosts))
	}
	return redis.NewClient(&redis.Options{Addr: hosts[0], Username: user, Password: pass, DB: db, TLSConfig: tlsConfig,
		ContextTimeoutEnabled: true, DialTimeout: t.timeout, MaxRetries: 1, DisableIdentity: true}), nil
}
