// Unit tests of the transport choice: -o uring=auto|on|off and the
// QCOW2FS_URING default, parsed and refused as documented.

package fusefs

import "testing"

func TestURingMode(t *testing.T) {
	for _, c := range []struct {
		opt, env, want string
		bad            bool
	}{
		{"", "", URingAuto, false},
		{"", "on", URingOn, false},
		{"", "off", URingOff, false},
		{"off", "on", URingOff, false}, // the option wins over the environment
		{"on", "", URingOn, false},
		{"AUTO", "", URingAuto, false},
		{"yes", "", URingOn, false},
		{"0", "", URingOff, false},
		{"sometimes", "", "", true},
		{"", "bogus", "", true},
	} {
		t.Setenv(URingEnv, c.env)
		got, err := uringMode(c.opt)
		if (err != nil) != c.bad || got != c.want {
			t.Errorf("uringMode(%q) with %s=%q = %q, %v; want %q (error %v)", c.opt, URingEnv, c.env, got, err, c.want, c.bad)
		}
	}
}
