// Package layout holds no code, only the test that keeps the house rules
// of the source tree: every Go file opens with a comment saying what it
// holds, and a file over 500 lines says at its top why it is long.
package layout
