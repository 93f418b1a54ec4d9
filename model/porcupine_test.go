package model

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

func write(client int, block, value uint64, call, ret int64) porcupine.Operation {
	return porcupine.Operation{ClientId: client, Input: BlockInput{Block: block, Write: true, Value: value},
		Output: BlockOutput{}, Call: call, Return: ret}
}

func read(client int, block, value uint64, call, ret int64) porcupine.Operation {
	return porcupine.Operation{ClientId: client, Input: BlockInput{Block: block},
		Output: BlockOutput{Value: value}, Call: call, Return: ret}
}

// unknown marks an operation's outcome as indeterminate.
func unknown(op porcupine.Operation) porcupine.Operation {
	out := op.Output.(BlockOutput)
	out.Unknown = true
	op.Output = out
	return op
}

func TestCheck(t *testing.T) {
	tests := []struct {
		name    string
		history []porcupine.Operation
		want    porcupine.CheckResult
	}{
		{"read of never-written block sees zero", []porcupine.Operation{
			read(0, 7, 0, 0, 1),
		}, porcupine.Ok},
		{"concurrent read may see old or new", []porcupine.Operation{
			write(0, 1, 10, 0, 1),
			write(0, 1, 11, 2, 10),
			read(1, 1, 10, 3, 4),
			read(2, 1, 11, 5, 6),
		}, porcupine.Ok},
		{"blocks are independent", []porcupine.Operation{
			write(0, 1, 10, 0, 1),
			write(0, 2, 20, 2, 3),
			read(1, 1, 10, 4, 5),
			read(1, 2, 20, 4, 5),
		}, porcupine.Ok},
		{"stale read after a write completed", []porcupine.Operation{
			write(0, 1, 10, 0, 1),
			write(0, 1, 11, 2, 3),
			read(1, 1, 10, 4, 5),
		}, porcupine.Illegal},
		{"read sees a write issued after it returned", []porcupine.Operation{
			read(1, 1, 10, 0, 1),
			write(0, 1, 10, 2, 3),
		}, porcupine.Illegal},
		{"value flips back", []porcupine.Operation{
			write(0, 1, 10, 0, 1),
			write(1, 1, 11, 0, 1),
			read(2, 1, 11, 2, 3),
			read(2, 1, 10, 4, 5),
		}, porcupine.Illegal},
		{"unknown write may apply late", []porcupine.Operation{
			unknown(write(0, 1, 10, 0, 1)),
			read(1, 1, 0, 2, 3),
			read(1, 1, 10, 4, 5),
		}, porcupine.Ok},
		{"unknown write may never apply", []porcupine.Operation{
			unknown(write(0, 1, 10, 0, 1)),
			read(1, 1, 0, 2, 3),
		}, porcupine.Ok},
		{"unknown write cannot apply before its call", []porcupine.Operation{
			read(1, 1, 10, 0, 1),
			unknown(write(0, 1, 10, 2, 3)),
		}, porcupine.Illegal},
		{"unknown read constrains nothing", []porcupine.Operation{
			write(0, 1, 10, 0, 1),
			unknown(read(1, 1, 99, 2, 3)),
		}, porcupine.Ok},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _ := Check(tt.history, 10*time.Second)
			if got != tt.want {
				t.Errorf("Check = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestCheckDoesNotModifyHistory(t *testing.T) {
	history := []porcupine.Operation{unknown(write(0, 1, 10, 0, 1))}
	Check(history, time.Second)
	if history[0].Return != 1 {
		t.Errorf("Check changed the caller's history: Return = %d", history[0].Return)
	}
}

func TestWriteVisualization(t *testing.T) {
	history := []porcupine.Operation{write(0, 1, 10, 0, 1), read(1, 1, 11, 2, 3)}
	result, info := Check(history, time.Second)
	if result != porcupine.Illegal {
		t.Fatalf("Check = %v, want Illegal", result)
	}
	if err := WriteVisualization(filepath.Join(t.TempDir(), "history.html"), info); err != nil {
		t.Fatalf("WriteVisualization: %v", err)
	}
	if err := WriteVisualization(filepath.Join(t.TempDir(), "missing", "history.html"), info); err == nil {
		t.Errorf("WriteVisualization into a missing directory succeeded")
	}
}
