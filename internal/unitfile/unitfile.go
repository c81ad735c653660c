// Package unitfile reads a systemd unit file and turns its Exec lines
// into argument vectors the way systemd does, as far as the units that
// qcow2fs ships need it: sections and keys, unit specifiers (%i, %I, ...),
// Environment= and EnvironmentFile= assignments, command-line quoting and
// $VAR / ${VAR} expansion. The integration tests use it to run a unit's
// commands where systemd is not PID 1 (containers, CI), so it errs on the
// side of refusing what it does not know rather than guessing.
package unitfile

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Unit is a parsed unit file: per section, each key's values in the order
// they appear (a key may be repeated, as Environment= often is).
type Unit struct {
	sections map[string]map[string][]string
}

// Parse reads a unit file: "[Section]" headers, "Key=Value" lines,
// comments (lines starting with '#' or ';'), and lines continued with a
// trailing backslash.
func Parse(r io.Reader) (*Unit, error) {
	u := &Unit{sections: map[string]map[string][]string{}}
	sc := bufio.NewScanner(r)
	section := ""
	lineNo := 0
	var cont strings.Builder
	for sc.Scan() {
		lineNo++
		line := sc.Text()
		if cont.Len() > 0 {
			// A continued line: comment lines inside are skipped.
			if t := strings.TrimSpace(line); strings.HasPrefix(t, "#") || strings.HasPrefix(t, ";") {
				continue
			}
		}
		if strings.HasSuffix(line, "\\") {
			cont.WriteString(strings.TrimSuffix(line, "\\"))
			cont.WriteString(" ")
			continue
		}
		cont.WriteString(line)
		line = strings.TrimSpace(cont.String())
		cont.Reset()
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
			continue
		case line[0] == '[':
			if !strings.HasSuffix(line, "]") {
				return nil, fmt.Errorf("line %d: bad section header %q", lineNo, line)
			}
			section = line[1 : len(line)-1]
			if u.sections[section] == nil {
				u.sections[section] = map[string][]string{}
			}
			continue
		}
		if section == "" {
			return nil, fmt.Errorf("line %d: assignment outside of a section", lineNo)
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("line %d: no '=' in %q", lineNo, line)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		u.sections[section][k] = append(u.sections[section][k], v)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if cont.Len() > 0 {
		return nil, fmt.Errorf("line %d: continuation at the end of the file", lineNo)
	}
	return u, nil
}

// Values returns every value of key in section, in order.
func (u *Unit) Values(section, key string) []string {
	return u.sections[section][key]
}

// Value returns the last value of key in section (the one systemd uses for
// a single-valued setting), or "".
func (u *Unit) Value(section, key string) string {
	v := u.Values(section, key)
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// Name describes the unit a file is loaded as: a template loaded for an
// instance ("qcow2fs@vm.service"), or a plain unit.
type Name struct {
	Full     string // "qcow2fs@vm.service"
	Prefix   string // "qcow2fs"
	Instance string // "vm" (still escaped); "" for a plain unit
	Suffix   string // "service"
}

// ParseName splits a unit name.
func ParseName(full string) (Name, error) {
	dot := strings.LastIndexByte(full, '.')
	if dot <= 0 || dot == len(full)-1 {
		return Name{}, fmt.Errorf("unit name %q has no type suffix", full)
	}
	n := Name{Full: full, Suffix: full[dot+1:]}
	base := full[:dot]
	if p, inst, ok := strings.Cut(base, "@"); ok {
		if p == "" || inst == "" {
			return Name{}, fmt.Errorf("unit name %q: empty prefix or instance", full)
		}
		n.Prefix, n.Instance = p, inst
	} else {
		n.Prefix = base
	}
	return n, nil
}

// Unescape undoes systemd's unit name escaping (systemd-escape): "-"
// stands for "/", and "\xNN" for the byte NN.
func Unescape(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '-':
			b.WriteByte('/')
		case c == '\\':
			if i+3 >= len(s) || s[i+1] != 'x' {
				return "", fmt.Errorf("bad escape in %q", s)
			}
			v, err := strconv.ParseUint(s[i+2:i+4], 16, 8)
			if err != nil {
				return "", fmt.Errorf("bad escape in %q", s)
			}
			b.WriteByte(byte(v))
			i += 3
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}

// unescapePath is Unescape for names that stand for a path: the result
// starts with "/" (systemd's %f).
func unescapePath(s string) (string, error) {
	u, err := Unescape(s)
	if err != nil {
		return "", err
	}
	return "/" + strings.TrimLeft(u, "/"), nil
}

// ExpandSpecifiers replaces the unit specifiers in s for unit n: %n, %N,
// %p, %P, %i, %I, %j, %J, %f and %%. Any other specifier is an error (the
// units we ship use no others; systemd would know them, this does not).
func ExpandSpecifiers(s string, n Name) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		if i+1 == len(s) {
			return "", fmt.Errorf("%q ends in a lone %%", s)
		}
		i++
		var v string
		var err error
		switch s[i] {
		case '%':
			v = "%"
		case 'n':
			v = n.Full
		case 'N':
			v = strings.TrimSuffix(n.Full, "."+n.Suffix)
		case 'p':
			v = n.Prefix
		case 'P':
			v, err = Unescape(n.Prefix)
		case 'i':
			v = n.Instance
		case 'I':
			v, err = Unescape(n.Instance)
		case 'j':
			v = n.Prefix[strings.LastIndexByte(n.Prefix, '-')+1:]
		case 'J':
			v, err = Unescape(n.Prefix[strings.LastIndexByte(n.Prefix, '-')+1:])
		case 'f':
			if n.Instance != "" {
				v, err = unescapePath(n.Instance)
			} else {
				v, err = unescapePath(n.Prefix)
			}
		default:
			return "", fmt.Errorf("%q: specifier %%%c is not supported here", s, s[i])
		}
		if err != nil {
			return "", err
		}
		b.WriteString(v)
	}
	return b.String(), nil
}

// SplitWords splits a command line or an Environment= value into words as
// systemd does: separated by whitespace, with double or single quotes
// grouping and C-style backslash escapes (\n, \t, \\, \", \', \xNN, and a
// backslash before any other character keeps that character).
func SplitWords(s string) ([]string, error) {
	var words []string
	var w strings.Builder
	inWord := false
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote == 0 && (c == ' ' || c == '\t'):
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
			continue
		case c == quote:
			quote = 0
			continue
		case quote == 0 && (c == '"' || c == '\''):
			quote = c
			inWord = true
			continue
		case c == '\\':
			if i+1 == len(s) {
				return nil, fmt.Errorf("%q ends in a lone backslash", s)
			}
			i++
			switch e := s[i]; e {
			case 'n':
				w.WriteByte('\n')
			case 't':
				w.WriteByte('\t')
			case 'x':
				if i+2 >= len(s) {
					return nil, fmt.Errorf("%q: short \\x escape", s)
				}
				v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
				if err != nil {
					return nil, fmt.Errorf("%q: bad \\x escape", s)
				}
				w.WriteByte(byte(v))
				i += 2
			default:
				w.WriteByte(e)
			}
			inWord = true
			continue
		}
		w.WriteByte(c)
		inWord = true
	}
	if quote != 0 {
		return nil, fmt.Errorf("%q: unterminated quote", s)
	}
	if inWord {
		words = append(words, w.String())
	}
	return words, nil
}

// ParseEnvironment turns Environment= values (each a list of quoted
// KEY=VALUE words) into assignments, later ones winning.
func ParseEnvironment(values []string, into map[string]string) error {
	for _, v := range values {
		words, err := SplitWords(v)
		if err != nil {
			return err
		}
		for _, w := range words {
			k, val, ok := strings.Cut(w, "=")
			if !ok || !validName(k) {
				return fmt.Errorf("Environment=: bad assignment %q", w)
			}
			into[k] = val
		}
	}
	return nil
}

// ParseEnvFile reads an EnvironmentFile= file into into, as systemd reads
// one: KEY=VALUE lines; blank lines and lines starting with '#' or ';' are
// skipped, and so are lines without a valid assignment. An unquoted value
// runs to the end of its line, a '#' in it included, without surrounding
// whitespace; a backslash keeps the next character and joins the next
// line when at the end of one. A value may start with single quotes
// (taken as they are, newlines too) or double quotes (where a backslash
// escapes only '"', '\\', '`', '$' and a newline); quotes inside an
// unquoted value are plain characters.
func ParseEnvFile(data string, into map[string]string) error {
	const (
		preKey = iota
		key
		comment
		preValue
		value
		single
		double
	)
	state := preKey
	var k, v strings.Builder
	trail := 0 // whitespace at the end of an unquoted value
	emit := func() {
		name := strings.TrimRight(k.String(), " \t")
		if validName(name) {
			val := v.String()
			into[name] = val[:len(val)-trail]
		}
		k.Reset()
		v.Reset()
		trail = 0
	}
	for i := 0; i < len(data); i++ {
		c := data[i]
		switch state {
		case preKey:
			switch {
			case c == '#' || c == ';':
				state = comment
			case c == ' ' || c == '\t' || c == '\r' || c == '\n':
			default:
				k.WriteByte(c)
				state = key
			}
		case comment:
			if c == '\n' {
				state = preKey
			}
		case key:
			switch c {
			case '=':
				state = preValue
			case '\n':
				k.Reset() // no assignment: ignored
				state = preKey
			default:
				k.WriteByte(c)
			}
		case preValue, value:
			switch {
			case c == '\n':
				emit()
				state = preKey
			case state == preValue && (c == ' ' || c == '\t' || c == '\r'):
			case state == preValue && c == '\'':
				state = single
			case state == preValue && c == '"':
				state = double
			case c == '\\':
				state = value
				if i+1 < len(data) {
					i++
					if data[i] != '\n' {
						v.WriteByte(data[i])
						trail = 0
					}
				}
			default:
				state = value
				v.WriteByte(c)
				if c == ' ' || c == '\t' || c == '\r' {
					trail++
				} else {
					trail = 0
				}
			}
		case single:
			if c == '\'' {
				state = preValue
			} else {
				v.WriteByte(c)
			}
		case double:
			switch {
			case c == '"':
				state = preValue
			case c == '\\' && i+1 < len(data):
				i++
				switch e := data[i]; e {
				case '"', '\\', '`', '$':
					v.WriteByte(e)
				case '\n':
				default:
					v.WriteByte(c)
					v.WriteByte(e)
				}
			default:
				v.WriteByte(c)
			}
		}
	}
	switch state {
	case single, double:
		return fmt.Errorf("%s: unterminated quote", strings.TrimSpace(k.String()))
	case preValue, value:
		emit()
	}
	return nil
}

// ExpandCommand expands environment variables in the words of an Exec
// line as systemd does when it runs it: a word that is exactly "$NAME"
// becomes the variable's value split at whitespace (zero or more words);
// "${NAME}" anywhere in a word is replaced by the value as it is (the word
// stays one word); "$$" is a "$". An unset variable is empty.
func ExpandCommand(words []string, env map[string]string) ([]string, error) {
	var out []string
	for _, w := range words {
		if len(w) > 1 && w[0] == '$' && validName(w[1:]) {
			out = append(out, strings.Fields(env[w[1:]])...)
			continue
		}
		var b strings.Builder
		for i := 0; i < len(w); i++ {
			switch {
			case strings.HasPrefix(w[i:], "$$"):
				b.WriteByte('$')
				i++
			case strings.HasPrefix(w[i:], "${"):
				end := strings.IndexByte(w[i:], '}')
				if end < 0 {
					return nil, fmt.Errorf("%q: unterminated ${", w)
				}
				name := w[i+2 : i+end]
				if !validName(name) {
					return nil, fmt.Errorf("%q: ${%s} is not supported here", w, name)
				}
				b.WriteString(env[name])
				i += end
			default:
				b.WriteByte(w[i])
			}
		}
		out = append(out, b.String())
	}
	return out, nil
}

// validName reports whether s is an environment variable name.
func validName(s string) bool {
	if s == "" || s[0] >= '0' && s[0] <= '9' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}
