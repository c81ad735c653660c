// qcow2fs version: the build's version (set with -ldflags, or from the
// module or VCS build info) and those of go-fuse and Go.

package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// version is set at build time: go build -ldflags "-X main.version=1.2.3".
var version = ""

func cmdVersion(args []string) error {
	if len(args) > 0 {
		if args[0] == "-h" || args[0] == "--help" {
			fmt.Println("Usage: qcow2fs version\n\nPrints the version of qcow2fs and of the libraries it was built with.")
			return nil
		}
		return usagef("version takes no arguments")
	}
	v := version
	fuseVersion := "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		for _, d := range bi.Deps {
			if d.Path == "github.com/hanwen/go-fuse/v2" {
				fuseVersion = d.Version
			}
		}
		if v == "" {
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" && len(s.Value) >= 12 {
					v = "dev-" + s.Value[:12]
				}
			}
		}
	}
	if v == "" {
		v = "dev"
	}
	fmt.Printf("qcow2fs %s (go-fuse %s, %s %s/%s)\n", v, fuseVersion, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return nil
}
