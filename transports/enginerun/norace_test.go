//go:build !race

package enginerun

const raceEnabled = false
