package bufpool

import "testing"

func TestGetPutSizes(t *testing.T) {
	for _, n := range []int{1, 4096, 4097, 8192, 1 << 20, 4 << 20} {
		b := Get(n)
		if len(b) != n || cap(b) < n {
			t.Fatalf("Get(%d): len %d cap %d", n, len(b), cap(b))
		}
		Put(b)
	}
	if b := Get(4<<20 + 1); len(b) != 4<<20+1 {
		t.Fatalf("Get above the classes: len %d", len(b))
	}
	Put(make([]byte, 5000)) // not a class size: ignored
	Put(make([]byte, 8192)[1:])
}

func TestGetPutAllocatesNothing(t *testing.T) {
	for range 4 {
		Put(Get(4096))
	}
	if n := testing.AllocsPerRun(1000, func() { Put(Get(4096)) }); n > 0 {
		t.Fatalf("Get+Put: %v allocations", n)
	}
}
