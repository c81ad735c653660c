// Unit tests of -o mount options and contradicting configurations, empty
// flag values for every command, and the cache size grammar.

package main

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

func TestApplyMountOptions(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want mountConfig
		err  string // substring of the error, "" = no error
	}{
		{in: "", want: mountConfig{}},
		{in: "rw", want: mountConfig{}},
		{in: "ro", want: mountConfig{ReadOnly: true}},
		{in: "ro,rw", want: mountConfig{ReadOnly: true}},
		{in: "rw,ro", want: mountConfig{ReadOnly: true}},
		{in: "allow_other,default_permissions", want: mountConfig{AllowOther: true, DefaultPermissions: true}},
		{in: "direct_io,debug", want: mountConfig{DirectIO: true, Debug: true}},
		{in: "cache_size=64M", want: mountConfig{CacheSize: 64 << 20}},
		{in: "cache_size=1GiB", want: mountConfig{CacheSize: 1 << 30}},
		{in: "log=/var/log/q.log", want: mountConfig{LogFile: "/var/log/q.log"}},
		{in: "snapshots=off,backing=off", want: mountConfig{NoSnapshots: true, NoBacking: true}},
		{in: "snapshots=off,snapshots=on", want: mountConfig{}},
		{in: "dev,suid,nodev,nosuid,exec,noexec,atime,noatime,relatime,strictatime,nodiratime", want: mountConfig{}},
		{in: "_netdev,nofail,noauto,auto,user,users,defaults", want: mountConfig{}},
		{in: "x-systemd.automount,x-systemd.device-timeout=10s,comment=systemd.foo", want: mountConfig{}},
		{in: "ro,,nofail", want: mountConfig{ReadOnly: true}},
		{in: "allow_root,partitions", want: mountConfig{AllowRoot: true, Partitions: true}},
		{in: "overlay=/var/tmp/ovl.qcow2", want: mountConfig{Overlay: "/var/tmp/ovl.qcow2"}},
		{in: "overlay=", err: `empty file name`},
		{in: "allow_root=1", err: `unknown mount option "allow_root=1"`},
		{in: "bogus", err: `unknown mount option "bogus"`},
		{in: "ro,frobnicate=1", err: `unknown mount option "frobnicate=1"`},
		{in: "ro=1", err: `unknown mount option "ro=1"`},
		{in: "cache_size", err: `unknown mount option "cache_size"`},
		{in: "cache_size=lots", err: `invalid size`},
		{in: "snapshots=maybe", err: `want on or off`},
		{in: "log=", err: `empty file name`},
	} {
		var got mountConfig
		err := applyMountOptions(&got, tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if got.ReadOnly != tc.want.ReadOnly || got.AllowOther != tc.want.AllowOther ||
			got.DefaultPermissions != tc.want.DefaultPermissions || got.DirectIO != tc.want.DirectIO ||
			got.Debug != tc.want.Debug || got.CacheSize != tc.want.CacheSize || got.LogFile != tc.want.LogFile ||
			got.NoSnapshots != tc.want.NoSnapshots || got.NoBacking != tc.want.NoBacking ||
			got.AllowRoot != tc.want.AllowRoot || got.Partitions != tc.want.Partitions || got.Overlay != tc.want.Overlay {
			t.Errorf("%q: got %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

func TestCheckMountConfig(t *testing.T) {
	for _, tc := range []struct {
		cfg  mountConfig
		n    int
		want string // substring of the error, "" = accepted
	}{
		{mountConfig{AllowOther: true}, 1, ""},
		{mountConfig{AllowRoot: true}, 1, ""},
		{mountConfig{AllowOther: true, AllowRoot: true}, 1, "exclude each other"},
		{mountConfig{Overlay: "o.qcow2"}, 1, ""},
		{mountConfig{Overlay: "o.qcow2", ReadOnly: true}, 1, "drop --ro"},
		{mountConfig{Overlay: "o.qcow2"}, 2, "exactly one image"},
		{mountConfig{Overlay: "o.qcow2", NoBacking: true}, 1, "exclude each other"},
		{mountConfig{NoBacking: true, ReadOnly: true}, 3, ""},
	} {
		err := checkMountConfig(&tc.cfg, tc.n)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%+v with %d images: %v, want %q", tc.cfg, tc.n, err, tc.want)
		}
	}
}

// TestEmptyFlagValues: an empty value for a flag that takes one is a usage
// error naming the flag, for every command; rebase -b "" (no backing
// file) is the one exception.
func TestEmptyFlagValues(t *testing.T) {
	for _, args := range [][]string{
		{"mount", "--overlay", "", "a.qcow2", "mnt"},
		{"mount", "--overlay=", "a.qcow2", "mnt"},
		{"mount", "--log", "", "a.qcow2", "mnt"},
		{"mount", "--cache-size=", "a.qcow2", "mnt"},
		{"info", "--output", "", "a.qcow2"},
		{"hash", "--algo=", "a.qcow2"},
		{"hash", "--snapshot", "", "a.qcow2"},
		{"check", "-r", "", "a.qcow2"},
		{"create", "-b", "", "a.qcow2", "1M"},
		{"snapshot", "-c", "", "a.qcow2"},
		{"map", "--max-length=", "a.qcow2"},
	} {
		code, _, stderr := runCLI(t, args...)
		flag := strings.TrimSuffix(strings.SplitN(args[1], "=", 2)[0], "=")
		if code != exitUsage || !strings.Contains(stderr, "empty value") {
			t.Errorf("qcow2fs %q: exit %d, %q; want a usage error about the empty value", args, code, stderr)
		}
		if strings.HasPrefix(flag, "--") && !strings.Contains(stderr, flag) {
			t.Errorf("qcow2fs %q: %q does not name %s", args, stderr, flag)
		}
	}
	// rebase -b "" removes the backing file: it gets as far as the image.
	code, _, stderr := runCLI(t, "rebase", "-u", "-b", "", filepath.Join(t.TempDir(), "missing.qcow2"))
	if code != exitError || strings.Contains(stderr, "empty value") {
		t.Errorf("rebase -b \"\": exit %d, %q; want the missing image reported", code, stderr)
	}
}

// TestCacheSizeFlag: --cache-size and -o cache_size take the one size
// grammar; a bad size is a usage error naming the flag or option.
func TestCacheSizeFlag(t *testing.T) {
	for _, args := range [][]string{
		{"--cache-size", "64M"},
		{"--cache-size=64M"},
		{"--cache-size=67108864"},
		{"--cache-size", "64MiB"},
		{"--cache-size=0.0625G"},
		{"-o", "cache_size=64M"},
		{"-o", "ro,cache_size=67108864"},
		{"-o", "cache_size=65536k"},
	} {
		cfg, pos, err := parseMountArgs(append(args, "vm.qcow2", "/mnt"))
		if err != nil {
			t.Errorf("%q: %v", args, err)
			continue
		}
		if cfg.CacheSize != 64<<20 || len(pos) != 2 {
			t.Errorf("%q: cache size %d, arguments %q; want 64 MiB", args, cfg.CacheSize, pos)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--cache-size=64Q"}, `--cache-size: invalid size "64Q"`},
		{[]string{"--cache-size", "-64M"}, `--cache-size: negative size "-64M"`},
		{[]string{"--cache-size=8E"}, `--cache-size: size "8E" is too large`},
		{[]string{"-o", "cache_size=64Q"}, `mount option "cache_size=64Q": invalid size "64Q"`},
		{[]string{"-o", "cache_size=-1"}, `mount option "cache_size=-1": negative size`},
	} {
		_, _, err := parseMountArgs(append(tc.args, "vm.qcow2", "/mnt"))
		var ue *usageError
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error saying %q", tc.args, err, tc.want)
		} else if !errors.As(err, &ue) {
			t.Errorf("%q: %v is not a usage error (exit code 2)", tc.args, err)
		}
	}
}
