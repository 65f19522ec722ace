//go:build race

package state

// raceEnabled says the race detector is on: heap figures mean nothing then.
const raceEnabled = true
