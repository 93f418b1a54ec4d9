// Package model holds Drover's reference models: the sequential
// specification every test uses as its oracle.
//
// Device is a sequential block device with snapshots, expansion and a crash
// oracle; tests compare the system under test against it. BlockModel is a
// porcupine model that checks concurrent histories for linearizability per
// block. The package imports only the standard library and porcupine, and
// never core: the oracle must not share code, or bugs, with what it checks.
package model
