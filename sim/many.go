package sim

import (
	"runtime"
	"sync"
)

// RunSeeds runs seeds [from, to) with up to jobs runs in parallel (each
// run is single-threaded and deterministic) and returns the results in
// seed order. progress, if set, is called after each run.
func RunSeeds(from, to uint64, jobs int, base Options, progress func(*Result)) []*Result {
	if jobs <= 0 {
		jobs = runtime.GOMAXPROCS(0)
	}
	results := make([]*Result, to-from)
	seeds := make(chan uint64)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i := 0; i < jobs; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seed := range seeds {
				opt := base
				opt.Seed = seed
				r := Run(opt)
				results[seed-from] = r
				if progress != nil {
					mu.Lock()
					progress(r)
					mu.Unlock()
				}
			}
		}()
	}
	for seed := from; seed < to; seed++ {
		seeds <- seed
	}
	close(seeds)
	wg.Wait()
	return results
}
