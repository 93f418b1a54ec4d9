package model

import (
	"fmt"
	"math"
	"time"

	"github.com/anishathalye/porcupine"
)

// BlockInput is the input of one per-block operation in a porcupine
// history. Multi-block IO is split into one operation per block, all with
// the IO's call and return times.
type BlockInput struct {
	// Block is the block index the operation touches.
	Block uint64
	// Write is true for a write (including trim and write-zeroes, which
	// write Value 0) and false for a read.
	Write bool
	// Value is the write id a write stamps in the block's first 8 bytes
	// (little endian); 0 means zeros. Unused for reads.
	Value uint64
}

// BlockOutput is the output of one per-block operation.
type BlockOutput struct {
	// Value is the write id a read found in the block's first 8 bytes; 0
	// means zeros or never written. Unused for writes.
	Value uint64
	// Unknown means the operation failed or timed out, so its outcome is
	// indeterminate: a write may or may not have been applied, a read
	// tells nothing. Check moves such operations' return to +∞.
	Unknown bool
}

// blockState is the porcupine state of one block: the write id it holds.
type blockState = uint64

// BlockModel is the porcupine model of a block device, partitioned by
// block. Each block is a register holding the id of the last write applied
// to it. Inputs are BlockInput and outputs BlockOutput values.
var BlockModel = porcupine.Model{
	Partition: partitionByBlock,
	Init:      func() any { return blockState(0) },
	Step:      stepBlock,
	Hash:      func(state any) uint64 { return state.(blockState) },
	DescribeOperation: func(input, output any) string {
		in, out := input.(BlockInput), output.(BlockOutput)
		switch {
		case in.Write && out.Unknown:
			return fmt.Sprintf("write(%d, %d) -> ?", in.Block, in.Value)
		case in.Write:
			return fmt.Sprintf("write(%d, %d)", in.Block, in.Value)
		case out.Unknown:
			return fmt.Sprintf("read(%d) -> ?", in.Block)
		default:
			return fmt.Sprintf("read(%d) -> %d", in.Block, out.Value)
		}
	},
	DescribeState: func(state any) string { return fmt.Sprintf("%d", state.(blockState)) },
}

// stepBlock applies one operation to a block's state. A write always
// applies (an unknown write's return at +∞ lets porcupine place it after
// everything, which is the same as never applying it); a read must see the
// current value unless its outcome is unknown.
func stepBlock(state, input, output any) (bool, any) {
	value := state.(blockState)
	in, out := input.(BlockInput), output.(BlockOutput)
	if in.Write {
		return true, blockState(in.Value)
	}
	if out.Unknown {
		return true, value
	}
	return out.Value == value, value
}

// partitionByBlock splits a history into one sub-history per block, in
// order of first appearance.
func partitionByBlock(history []porcupine.Operation) [][]porcupine.Operation {
	index := make(map[uint64]int)
	var partitions [][]porcupine.Operation
	for _, op := range history {
		block := op.Input.(BlockInput).Block
		i, ok := index[block]
		if !ok {
			i = len(partitions)
			index[block] = i
			partitions = append(partitions, nil)
		}
		partitions[i] = append(partitions[i], op)
	}
	return partitions
}

// Check checks a per-block history for linearizability against BlockModel.
// It works on a copy in which every operation whose output is Unknown
// returns at math.MaxInt64, so porcupine may linearize an unknown write at
// any point after its call, including never. A timeout of 0 means no limit.
// A porcupine.Unknown result means the checker timed out: treat it as a
// failure to investigate, never as a pass.
func Check(history []porcupine.Operation, timeout time.Duration) (porcupine.CheckResult, porcupine.LinearizationInfo) {
	ops := make([]porcupine.Operation, len(history))
	copy(ops, history)
	for i := range ops {
		if ops[i].Output.(BlockOutput).Unknown {
			ops[i].Return = math.MaxInt64
		}
	}
	return porcupine.CheckOperationsVerbose(BlockModel, ops, timeout)
}

// WriteVisualization writes porcupine's HTML visualization of a checked
// history to path.
func WriteVisualization(path string, info porcupine.LinearizationInfo) error {
	if err := porcupine.VisualizePath(BlockModel, info, path); err != nil {
		return fmt.Errorf("write linearizability visualization to %s: %w", path, err)
	}
	return nil
}
