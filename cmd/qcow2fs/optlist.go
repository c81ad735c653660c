// The -o KEY=VALUE[,KEY=VALUE...] lists of the maintenance commands
// (create and convert), as qemu-img reads them.

package main

import (
	"fmt"
	"strings"
)

// keyValue is one item of a -o list.
type keyValue struct{ Key, Value string }

// parseKeyValues splits qemu-img style option lists ("a=1,b=2"; a literal
// comma is written ",,") as given to one or more -o flags. A key without
// "=" gets the value "on" (as QEMU treats a bare boolean); "help" and "?"
// are returned as keys with an empty value.
func parseKeyValues(lists []string) ([]keyValue, error) {
	var out []keyValue
	for _, list := range lists {
		var items []string
		var cur strings.Builder
		for i := 0; i < len(list); i++ {
			if list[i] == ',' {
				if i+1 < len(list) && list[i+1] == ',' {
					cur.WriteByte(',')
					i++
					continue
				}
				items = append(items, cur.String())
				cur.Reset()
				continue
			}
			cur.WriteByte(list[i])
		}
		items = append(items, cur.String())
		for _, it := range items {
			if it == "" {
				continue
			}
			k, v, ok := strings.Cut(it, "=")
			k = strings.TrimSpace(k)
			switch {
			case k == "":
				return nil, fmt.Errorf("option %q has no name", it)
			case !ok && (k == "help" || k == "?"):
				v = ""
			case !ok:
				v = "on"
			}
			out = append(out, keyValue{Key: k, Value: v})
		}
	}
	return out, nil
}

// parseBoolValue reads an on/off option value the way QEMU does.
func parseBoolValue(key, v string) (bool, error) {
	switch strings.ToLower(v) {
	case "on", "yes", "true", "y":
		return true, nil
	case "off", "no", "false", "n":
		return false, nil
	}
	return false, fmt.Errorf("option %s: want on or off, not %q", key, v)
}
