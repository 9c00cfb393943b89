//go:build race

package abitest

// raceEnabled: see TestMain.
const raceEnabled = true
