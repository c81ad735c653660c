// Tests of racing mounts onto one mount point or of one image: exactly one
// wins, the others say why and hold nothing.

package integration

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qcow2fs/qcow2fs/internal/mounts"
)

// raceCommands starts every command at the same moment and returns how
// each ended (bounded: a hang is a failure, not a stuck suite).
func raceCommands(suspects []string, cmds [][]string) []result {
	out := make([]result, len(cmds))
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, c := range cmds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			out[i] = bounded(60*time.Second, suspects, "", qcow2fsBin, c...)
		}()
	}
	close(start)
	wg.Wait()
	return out
}

// oneWinner checks that exactly one of the raced commands succeeded and
// that every other one failed with exit 1 and one line containing want
// (a function of the winner's index). It returns the winner's index.
func oneWinner(t *testing.T, cmds [][]string, res []result, want func(winner int) string) int {
	t.Helper()
	winner := -1
	for i, r := range res {
		if r.Code == 0 {
			if winner >= 0 {
				t.Errorf("both %q and %q succeeded", strings.Join(cmds[winner], " "), strings.Join(cmds[i], " "))
			}
			winner = i
		}
	}
	if winner < 0 {
		for i, r := range res {
			t.Logf("qcow2fs %s: %s", strings.Join(cmds[i], " "), r)
		}
		t.Fatalf("none of %d racing mounts succeeded", len(cmds))
	}
	for i, r := range res {
		if i == winner {
			continue
		}
		msg := strings.TrimSpace(r.Stderr)
		if r.Code != 1 || !strings.Contains(msg, want(winner)) || strings.Contains(msg, "\n") {
			t.Errorf("qcow2fs %s: %s\nwant exit 1 and one line saying %q", strings.Join(cmds[i], " "), r, want(winner))
		}
	}
	return winner
}

// TestRacingMounts: mounts racing for one mount point, or for one image,
// must not all win. Four mounts of four images onto one mount point leave
// exactly one mount there; four read-only mounts of one image (QEMU's
// reader locks share, so the image locks let them all in) leave exactly
// one mount of it: a mounted image is refused as "already mounted at X",
// read-only or not. The losers say why in one line and hold nothing.
func TestRacingMounts(t *testing.T) {
	requireEnv(t)
	dir := testDir(t)
	k := newImageKit(t, mkdir(t, dir, "img"))
	const n = 4

	t.Run("one-mount-point", func(t *testing.T) {
		mnt := mkdir(t, dir, "shared-mnt")
		t.Cleanup(func() { cleanupMount(t, mnt) })
		var cmds [][]string
		var imgs []string
		for i := 0; i < n; i++ {
			img := k.Path(fmt.Sprintf("p%d", i))
			qemuCreate(t, img, "4M", "", "", "")
			imgs = append(imgs, img)
			cmds = append(cmds, []string{"mount", img, mnt})
		}
		res := raceCommands([]string{mnt}, cmds)
		oneWinner(t, cmds, res, func(int) string { return mnt + " is already a qcow2fs mount" })
		if c := mountCount(t, mnt); c != 1 {
			t.Errorf("%d mounts stacked at %s, want 1", c, mnt)
		}
		unmountQcow2fs(t, mnt, imgs...)
		if c := mountCount(t, mnt); c != 0 {
			t.Errorf("%d mounts left at %s after unmount", c, mnt)
		}
	})

	t.Run("one-image-read-only", func(t *testing.T) {
		img := k.Path("evidence")
		qemuCreate(t, img, "4M", "", "", "")
		var cmds [][]string
		var mnts []string
		for i := 0; i < n; i++ {
			mnt := mkdir(t, dir, fmt.Sprintf("ro%d", i))
			t.Cleanup(func() { cleanupMount(t, mnt) })
			mnts = append(mnts, mnt)
			cmds = append(cmds, []string{"mount", "--ro", img, mnt})
		}
		res := raceCommands(mnts, cmds)
		w := oneWinner(t, cmds, res, func(w int) string { return img + " is already mounted at " + mnts[w] })
		for i, mnt := range mnts {
			if _, ok := mounts.Find(mnt); ok != (i == w) {
				t.Errorf("%s mounted: %v, want %v", mnt, ok, i == w)
			}
		}
		unmountQcow2fs(t, mnts[w], img)
	})
}
