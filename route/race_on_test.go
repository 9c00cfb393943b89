//go:build race

package route

// raceEnabled: the race detector adds allocations of its own, so exact
// allocation counts are only checked without it.
const raceEnabled = true
