package aside

import (
	"strings"
	"testing"
)

func TestKey(t *testing.T) {
	long := strings.Repeat("x", maxPartLen+1)
	tests := []struct {
		name  string
		parts []string
		want  string
	}{
		{"one part", []string{"42"}, "42"},
		{"two parts", []string{"42", "en"}, "42:en"},
		{"separator in a part", []string{"a:b"}, "a~3Ab"},
		{"Key's escape in a part", []string{"~7E"}, "~7E7E"},
		{"Redis' escape left to the Redis key", []string{"100%"}, "100%"},
		{"braces left to the Redis key", []string{"{x}"}, "{x}"},
		{"space left to the Redis key", []string{"c 2"}, "c 2"},
		{"utf-8 kept", []string{"café"}, "café"},
		{"empty part", []string{"a", ""}, "a:"},
		{"long part hashed", []string{"u", long}, "u:~h" + "9537c5fdf120482f7d58d25e9ed583f5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Key(tt.parts...); got != tt.want {
				t.Errorf("Key(%q) = %q, want %q", tt.parts, got, tt.want)
			}
		})
	}
}

func TestEntryKey(t *testing.T) {
	ks := newKeyspace("shop", "product", 3)
	long := strings.Repeat("y", maxKeyLen+1)
	tests := []struct{ name, key, want string }{
		{"plain", "42", "shop:product:v3:{42}"},
		{"from Key", Key("42", "en"), "shop:product:v3:{42:en}"},
		{"escaped Key part, escaped once", Key("o3:x"), "shop:product:v3:{o3~3Ax}"},
		{"a Key part with a space, escaped as a tag is", Key("c 2"), "shop:product:v3:{c%202}"},
		{"braces cannot move the slot", "x}{y", "shop:product:v3:{x%7D%7By}"},
		{"glob", "*", "shop:product:v3:{%2A}"},
		{"long key hashed", long, "shop:product:v3:{#" + sha128(long) + "}"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ks.entry(tt.key); got != tt.want {
				t.Errorf("entry(%q) = %q, want %q", tt.key, got, tt.want)
			}
		})
	}
}

func sha128(s string) string {
	var b strings.Builder
	writeHash(&b, s)
	return b.String()[1:]
}

func TestValidName(t *testing.T) {
	bad := []string{"", "a:b", "a b", "{x}", "a*", strings.Repeat("n", 65), "é"}
	for _, s := range bad {
		if err := validName("cache name", s); err == nil || !strings.HasPrefix(err.Error(), "aside: ") {
			t.Errorf("validName(%q) = %v, want an aside: error", s, err)
		}
	}
	for _, s := range []string{"product", "Product_2", "a.b-c", strings.Repeat("n", 64)} {
		if err := validName("cache name", s); err != nil {
			t.Errorf("validName(%q) = %v, want nil", s, err)
		}
	}
}

// FuzzEntryKey checks the key encoder's promises on arbitrary input: the
// user part has exactly one hash tag, holds no glob or control bytes, stays
// bounded, and distinct keys never share a Redis key; Key is injective; a
// key from Key is escaped once, and as a tag with the same bytes is.
func FuzzEntryKey(f *testing.F) {
	for _, s := range []string{"42", "a:b", "{x}", "*", "%41", "#abc", strings.Repeat("z", 300), "\x00\xff"} {
		f.Add(s, "a")
	}
	ks := newKeyspace("p", "n", 1)
	f.Fuzz(func(t *testing.T, a, b string) {
		ka, kb := ks.entry(a), ks.entry(b)
		if (a == b) != (ka == kb) {
			t.Fatalf("entry(%q) = %q, entry(%q) = %q: injectivity broken", a, ka, b, kb)
		}
		user := strings.TrimPrefix(ka, "p:n:v1:")
		if !strings.HasPrefix(user, "{") || !strings.HasSuffix(user, "}") || strings.ContainsAny(user[1:len(user)-1], "{}*?[]\\ \n\r\t") {
			t.Fatalf("entry(%q) = %q: unsafe bytes in the user part", a, ka)
		}
		if len(user) > maxKeyLen+2 {
			t.Fatalf("entry(%q) is %d bytes long", a, len(ka))
		}
		if (Key(a, b) == Key(a+":"+b)) && b != "" {
			t.Fatalf("Key(%q, %q) collides with Key(%q)", a, b, a+":"+b)
		}
		if (Key(a) == Key(b)) != (a == b) || (Key(a, b) == Key(b, a)) != (a == b) {
			t.Fatalf("Key is not injective on %q, %q", a, b)
		}
		if len(a) <= maxPartLen && !strings.ContainsAny(a, ":~") && ks.entry(Key(a)) != ka {
			t.Fatalf("entry(Key(%q)) = %q, entry(%q) = %q: Key escaped it too", a, ks.entry(Key(a)), a, ka)
		}
		if len(user) <= maxKeyLen && strings.TrimPrefix(tagKey("p", a), "p:#tag:") != user {
			t.Fatalf("tag %q is %q, entry key %q: escaped differently", a, tagKey("p", a), ka)
		}
	})
}
