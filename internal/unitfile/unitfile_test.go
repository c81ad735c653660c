// Unit tests of the unit-file reader: specifiers, Environment= and
// EnvironmentFile=, quoting and $VAR expansion, against what systemd does.

package unitfile

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

func TestExpandSpecifiers(t *testing.T) {
	for _, tc := range []struct {
		unit, in, want string
	}{
		{"qcow2fs@vm.service", "/etc/qcow2fs/%i.conf", "/etc/qcow2fs/vm.conf"},
		{"qcow2fs@vm.service", "qcow2fs mount %i (see /etc/qcow2fs/%i.conf)", "qcow2fs mount vm (see /etc/qcow2fs/vm.conf)"},
		// An instance made by systemd-escape --path /srv/vm-a: %i keeps
		// the escapes, %I and %f undo them.
		{`qcow2fs@srv-vm\x2da.service`, "%i|%I|%f", `srv-vm\x2da|srv/vm-a|/srv/vm-a`},
		{"qcow2fs@vm.service", "%n %N %p %P %j %J", "qcow2fs@vm.service qcow2fs@vm qcow2fs qcow2fs qcow2fs qcow2fs"},
		{"foo-bar@x.service", "%p %P %j %J %f", "foo-bar foo/bar bar bar /x"},
		{"mnt-vm.mount", "%i|%f|%N", "|/mnt/vm|mnt-vm"},
		{"qcow2fs@vm.service", "100%% of %i", "100% of vm"},
	} {
		n, err := ParseName(tc.unit)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ExpandSpecifiers(tc.in, n)
		if err != nil || got != tc.want {
			t.Errorf("%s: %q → %q, %v; want %q", tc.unit, tc.in, got, err, tc.want)
		}
	}
	n, _ := ParseName("qcow2fs@vm.service")
	for _, bad := range []string{"%z", "ends in %", "%H"} {
		if got, err := ExpandSpecifiers(bad, n); err == nil {
			t.Errorf("%q → %q, want an error (unsupported specifier)", bad, got)
		}
	}
}

func TestParseName(t *testing.T) {
	n, err := ParseName("qcow2fs@vm.service")
	if err != nil || n != (Name{Full: "qcow2fs@vm.service", Prefix: "qcow2fs", Instance: "vm", Suffix: "service"}) {
		t.Errorf("ParseName: %+v, %v", n, err)
	}
	for _, bad := range []string{"noservice", "@vm.service", "qcow2fs@.x", "x."} {
		if _, err := ParseName(bad); err == nil {
			t.Errorf("ParseName(%q) succeeded", bad)
		}
	}
}

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{"a-b": "a/b", `a\x2db`: "a-b", `\x20x`: " x", "plain": "plain"} {
		if got, err := Unescape(in); err != nil || got != want {
			t.Errorf("Unescape(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{`a\x2`, `a\y20`, `\xzz`, `\`} {
		if got, err := Unescape(bad); err == nil {
			t.Errorf("Unescape(%q) = %q, want an error", bad, got)
		}
	}
}

func TestSplitWords(t *testing.T) {
	for in, want := range map[string][]string{
		"/usr/bin/qcow2fs mount -o ${OPTIONS} ${IMAGE}": {"/usr/bin/qcow2fs", "mount", "-o", "${OPTIONS}", "${IMAGE}"},
		`a "b c" 'd e' f\ g`:                            {"a", "b c", "d e", "f g"},
		`x"y z"w \x41\t`:                                {"xy zw", "A\t"},
		`  spaced   out  `:                              {"spaced", "out"},
		`""`:                                            {""},
	} {
		got, err := SplitWords(in)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("SplitWords(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{`"open`, `trailing\`, `\x4`} {
		if got, err := SplitWords(bad); err == nil {
			t.Errorf("SplitWords(%q) = %q, want an error", bad, got)
		}
	}
}

func TestExpandCommand(t *testing.T) {
	env := map[string]string{"IMAGE": "/var/lib/my images/vm.qcow2", "OPTS": "ro  partitions", "MNT": "/mnt/vm"}
	for _, tc := range []struct {
		in, want []string
	}{
		// ${VAR}: one word, whitespace kept.
		{[]string{"mount", "${IMAGE}", "${MNT}"}, []string{"mount", "/var/lib/my images/vm.qcow2", "/mnt/vm"}},
		// $VAR alone: split at whitespace; unset: no word at all.
		{[]string{"x", "$OPTS", "$UNSET", "y"}, []string{"x", "ro", "partitions", "y"}},
		// Inside a word; unset ${VAR} is empty; $$ is a dollar.
		{[]string{"--dir=${MNT}/sub", "${UNSET}", "$$OPTS", "a$OPTS"}, []string{"--dir=/mnt/vm/sub", "", "$OPTS", "a$OPTS"}},
	} {
		got, err := ExpandCommand(tc.in, env)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ExpandCommand(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range [][]string{{"${OPEN"}, {"${A:-b}"}} {
		if got, err := ExpandCommand(bad, env); err == nil {
			t.Errorf("ExpandCommand(%q) = %q, want an error", bad, got)
		}
	}
}

// TestParseEnvFile: the expectations are what systemd 252's own parser
// makes of the same file (checked through systemd-environment-d-generator,
// which reads environment.d files with it).
func TestParseEnvFile(t *testing.T) {
	file := strings.Join([]string{
		"# a comment",
		"  ; another",
		"IMAGE=/var/lib/images/vm.qcow2      # an image",
		"A=  plain value   ",
		`B="quoted  # kept"`,
		`C='single \n raw'`,
		`D=back\\slash\ space`,
		`E=line\`,
		"continued",
		`F=a"b c"d`,
		" G = spaced",
		`H="multi`,
		`line"`,
		`I="a" b`,
		`K="x\ny"`,
		`L="x\"y"`,
		`M=x\ny`,
		"not an assignment",
		"bad key=x",
		"EMPTY=",
		"LAST=no newline",
	}, "\n")
	got := map[string]string{"EMPTY": "was set"}
	if err := ParseEnvFile(file, got); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"IMAGE": "/var/lib/images/vm.qcow2      # an image",
		"A":     "plain value",
		"B":     "quoted  # kept",
		"C":     `single \n raw`,
		"D":     `back\slash space`,
		"E":     "linecontinued",
		"F":     `a"b c"d`,
		"G":     "spaced",
		"H":     "multi\nline",
		"I":     "ab",
		"K":     `x\ny`,
		"L":     `x"y`,
		"M":     "xny",
		"EMPTY": "",
		"LAST":  "no newline",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ParseEnvFile:\n got %q\nwant %q", got, want)
	}
	if err := ParseEnvFile(`X="open`, map[string]string{}); err == nil {
		t.Error("unterminated quote accepted")
	}
}

func TestParseEnvironment(t *testing.T) {
	got := map[string]string{"KEEP": "1"}
	if err := ParseEnvironment([]string{"OPTIONS=defaults", `"B=x y" C=z`, "OPTIONS=ro"}, got); err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"KEEP": "1", "OPTIONS": "ro", "B": "x y", "C": "z"}; !reflect.DeepEqual(got, want) {
		t.Errorf("ParseEnvironment: %q, want %q", got, want)
	}
	if err := ParseEnvironment([]string{"novalue"}, got); err == nil {
		t.Error("an assignment without '=' was accepted")
	}
}

func TestParse(t *testing.T) {
	u, err := Parse(strings.NewReader(`# comment
[Unit]
Description=x %i
[Service]
Environment=A=1
Environment=B=2
ExecStart=/bin/echo one \
  # a comment line inside
  two
; comment
`))
	if err != nil {
		t.Fatal(err)
	}
	if got := u.Values("Service", "Environment"); !reflect.DeepEqual(got, []string{"A=1", "B=2"}) {
		t.Errorf("Environment: %q", got)
	}
	if got := u.Value("Service", "ExecStart"); got != "/bin/echo one    two" {
		t.Errorf("ExecStart: %q", got)
	}
	if got := u.Value("Unit", "Description"); got != "x %i" {
		t.Errorf("Description: %q", got)
	}
	for _, bad := range []string{"Key=outside", "[Unit\nA=b", "[Unit]\nnoequals", "[Unit]\nA=b \\"} {
		if _, err := Parse(strings.NewReader(bad)); err == nil {
			t.Errorf("Parse(%q) succeeded", bad)
		}
	}
}

// TestShippedUnit: the template unit the package installs parses, and
// every specifier it uses is one this package expands.
func TestShippedUnit(t *testing.T) {
	f, err := os.Open("../../packaging/qcow2fs@.service")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u, err := Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := ParseName("qcow2fs@vm.service")
	for _, sec := range []string{"Unit", "Service", "Install"} {
		for k, vs := range u.sections[sec] {
			for _, v := range vs {
				if _, err := ExpandSpecifiers(v, n); err != nil {
					t.Errorf("[%s] %s=%s: %v", sec, k, v, err)
				}
			}
		}
	}
	if u.Value("Service", "ExecStart") == "" || u.Value("Service", "ExecStop") == "" {
		t.Error("no ExecStart= or ExecStop=")
	}
}
