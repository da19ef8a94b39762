package aside

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestProfileValidate(t *testing.T) {
	ok := Profile{Name: "p", TTL: time.Minute, LoadTimeout: time.Second}
	with := func(f func(*Profile)) Profile { p := ok; f(&p); return p }
	tests := []struct {
		name string
		p    Profile
		want string // substring of the error
	}{
		{"zero TTL", with(func(p *Profile) { p.TTL = 0 }), "TTL must be > 0"},
		{"negative TTL", with(func(p *Profile) { p.TTL = -time.Second }), "TTL must be > 0"},
		{"negative jitter", with(func(p *Profile) { p.Jitter = -1 }), "Jitter must be >= 0"},
		{"no load timeout", with(func(p *Profile) { p.LoadTimeout = 0 }), "LoadTimeout must be > 0"},
		{"negative compression", with(func(p *Profile) { p.CompressAbove = -1 }), "CompressAbove"},
		{"negative max size", with(func(p *Profile) { p.MaxEntryBytes = -1 }), "MaxEntryBytes"},
		{"bad name", with(func(p *Profile) { p.Name = "a:b" }), "profile name"},
		{"negative stale window", with(func(p *Profile) { p.StaleWindow = -1 }), "StaleWindow"},
		{"negative negative TTL", with(func(p *Profile) { p.NegativeTTL = -1 }), "NegativeTTL"},
		{"negative beta", with(func(p *Profile) { p.EarlyRefresh = -0.5 }), "EarlyRefresh"},
		{"NaN beta", with(func(p *Profile) { p.EarlyRefresh = math.NaN() }), "EarlyRefresh"},
		{"negative wait budget", with(func(p *Profile) { p.WaitBudget = -1 }), "WaitBudget"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.p.validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "aside: ") {
				t.Errorf("validate() = %v, want an aside: error containing %q", err, tt.want)
			}
		})
	}
	for name, p := range builtinProfiles() {
		if err := p.validate(); err != nil {
			t.Errorf("built-in %s: %v", name, err)
		}
	}
}

func TestJitterStaysInRange(t *testing.T) {
	p := Profile{Name: "p", TTL: time.Second, Jitter: 100 * time.Millisecond, LoadTimeout: time.Second}
	for range 1000 {
		if d := p.freshFor(); d < p.TTL || d >= p.TTL+p.Jitter {
			t.Fatalf("freshFor() = %v, want in [1s, 1.1s)", d)
		}
	}
}

func TestXFetchProbabilityRisesTowardExpiry(t *testing.T) {
	p := Profile{EarlyRefresh: 1}
	expiry := time.Unix(1000, 0)
	load := 100 * time.Millisecond
	rate := func(before time.Duration) float64 {
		n := 0
		for range 10000 {
			if p.shouldRefreshEarly(expiry.Add(-before), expiry, load) {
				n++
			}
		}
		return float64(n) / 10000
	}
	// P(refresh) = exp(-before/(δβ)): 1 at expiry, e^-1 one load time before, ~0 far away.
	far, near, at := rate(2*time.Second), rate(load), rate(0)
	if far > 0.001 || near < 0.33 || near > 0.41 || at != 1 {
		t.Errorf("refresh rates: 2 s before %.4f, one load before %.3f, at expiry %.3f; want ~0, ~0.37, 1", far, near, at)
	}
	if (Profile{}).shouldRefreshEarly(expiry, expiry, load) {
		t.Error("β = 0 must disable early refresh")
	}
}
