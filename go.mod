module github.com/qcow2fs/qcow2fs

go 1.26.8

require (
	github.com/klauspost/compress v1.20.4
	golang.org/x/sys v0.28.0
)

require (
	github.com/hanwen/go-fuse/v2 v2.12.1 // indirect
	github.com/sirupsen/logrus v1.10.2 // indirect
	github.com/spf13/pflag v1.1.0 // indirect
)
