package controlplane

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// BenchmarkClusterWrites measures workload upserts through the API of an
// in-process 3-server cluster at concurrency 64. `make bench` is the
// comparison against etcd with servers as processes; this one exists for
// profiling the write path (-cpuprofile, -memprofile).
func BenchmarkClusterWrites(b *testing.B) {
	c := startTestCluster(b, 3)
	cl := c.client(b, c.leader(b))
	const workers = 64
	var next atomic.Int64
	b.ResetTimer()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				_, err := cl.Catalog.UpdateWorkload(context.Background(), &meshfedv1.UpdateWorkloadRequest{AllowMissing: true, Workload: &meshfedv1.Workload{
					Meta:    &meshfedv1.Meta{Name: fmt.Sprintf("w-%d-%d", w, i%1000)},
					Service: "web", Address: "10.0.0.1", Port: uint32(1 + i%60000),
				}})
				if err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
