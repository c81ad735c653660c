package qcow2

import "fmt"

// rebuildRefcounts recomputes every refcount of a dirty image (lazy
// refcounts left stale by an unclean shutdown) before the first allocation.
func (w *writer) rebuildRefcounts() error {
	return fmt.Errorf("dirty image: refcount rebuild not implemented yet; run qemu-img check -r all first")
}
