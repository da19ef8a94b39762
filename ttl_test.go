package aside

import (
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
		if d := p.ttl(); d < p.TTL || d >= p.TTL+p.Jitter {
			t.Fatalf("ttl() = %v, want in [1s, 1.1s)", d)
		}
	}
}
