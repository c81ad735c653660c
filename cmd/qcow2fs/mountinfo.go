// The file system type qcow2fs mounts carry in /proc/self/mountinfo.

package main

// fsType is the file system type qcow2fs mounts show in mountinfo.
const fsType = "fuse.qcow2fs"
