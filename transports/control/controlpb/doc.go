// Package controlpb holds the generated protobuf and gRPC code of Drover's
// control API (control.proto). Regenerate it with `make proto`; the
// generated files are committed so that builds need no protoc.
package controlpb
