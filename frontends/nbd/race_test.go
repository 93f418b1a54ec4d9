//go:build race

package nbd_test

// raceEnabled: the race detector keeps shadow memory for every heap
// object and slows each request several times, so heap and RSS figures
// mean nothing under it.
const raceEnabled = true
