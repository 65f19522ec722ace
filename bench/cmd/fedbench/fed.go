package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/bench/internal/harness"
)

const (
	namespace = "default"
	propName  = "prop"  // exported; its changes are timed into east
	localName = "local" // not exported; the CPU baseline
)

// fed is the two clusters and the connections the benchmark drives them by.
type fed struct {
	west, east *harness.MeshfedCluster
	proxies    []*cutProxy

	wLeader, eLeader, eFollower *grpc.ClientConn
	token                       string
	prop, local                 *meshfedv1.Workload
}

func (f *fed) close() {
	for _, c := range []*grpc.ClientConn{f.wLeader, f.eLeader, f.eFollower} {
		if c != nil {
			c.Close()
		}
	}
	for _, p := range f.proxies {
		p.close()
	}
}

// setup starts both clusters side by side; each west server advertises its
// API through its own proxy.
func setup(ctx context.Context, ps *harness.Procs, bin, dir string) (*fed, error) {
	f := &fed{}
	var mu sync.Mutex
	direct := map[string]string{} // proxy address → the server's own API address
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		c, err := harness.StartMeshfedCluster(gctx, ps, bin, dir+"/west", harness.ClusterOptions{Name: "west",
			Args: func(s *harness.MeshfedServer) []string {
				p, err := newCutProxy(s.API)
				if err != nil {
					panic(err)
				}
				mu.Lock()
				f.proxies = append(f.proxies, p)
				direct[p.addr()] = s.API
				mu.Unlock()
				return []string{"--api-advertise-addr", p.addr()}
			}})
		f.west = c
		return err
	})
	g.Go(func() error {
		c, err := harness.StartMeshfedCluster(gctx, ps, bin, dir+"/east", harness.ClusterOptions{Name: "east"})
		f.east = c
		return err
	})
	harness.Logf("starting clusters west and east (3 servers each)")
	if err := g.Wait(); err != nil {
		f.close()
		return nil, err
	}
	wl, err := f.west.Leader(ctx)
	if err != nil {
		f.close()
		return nil, err
	}
	if d, ok := direct[wl]; ok {
		wl = d
	}
	el, err := f.east.Leader(ctx)
	if err != nil {
		f.close()
		return nil, err
	}
	ef := ""
	for _, s := range f.east.Servers {
		if s.API != el {
			ef = s.API
			break
		}
	}
	for _, d := range []struct {
		conn **grpc.ClientConn
		c    *harness.MeshfedCluster
		addr string
	}{{&f.wLeader, f.west, wl}, {&f.eLeader, f.east, el}, {&f.eFollower, f.east, ef}} {
		if *d.conn, err = harness.DialMeshfed(d.addr, d.c.CAPEM, d.c.Token); err != nil {
			f.close()
			return nil, err
		}
	}
	return f, nil
}

// populate creates the exported services and their endpoints in west, plus
// the two services the single changes are made to.
func (f *fed) populate(ctx context.Context, services, endpoints int) error {
	pc := meshfedv1.NewPeeringServiceClient(f.wLeader)
	tok, err := pc.GeneratePeeringToken(ctx, &meshfedv1.GeneratePeeringTokenRequest{Peer: "east"})
	if err != nil {
		return fmt.Errorf("peering token: %w", err)
	}
	f.token = tok.GetToken()
	cc := meshfedv1.NewCatalogServiceClient(f.wLeader)
	names := []string{propName, localName}
	for i := range services {
		names = append(names, fmt.Sprintf("svc-%04d", i))
	}
	workload := func(svc string, j int) *meshfedv1.Workload {
		return &meshfedv1.Workload{
			Meta:    &meshfedv1.Meta{Namespace: namespace, Name: fmt.Sprintf("%s-%d", svc, j)},
			Service: svc, Address: fmt.Sprintf("10.%d.%d.%d", j/250, (j%250)+1, len(svc)), Port: 8443,
			Health: meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY, Locality: &meshfedv1.Locality{Region: "west-1", Zone: "a"},
		}
	}
	run := func(jobs []func(context.Context) error) error {
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(32)
		for _, j := range jobs {
			g.Go(func() error { return j(gctx) })
		}
		return g.Wait()
	}
	var jobs []func(context.Context) error
	for _, n := range names {
		jobs = append(jobs, func(ctx context.Context) error {
			_, err := cc.CreateService(ctx, &meshfedv1.CreateServiceRequest{Service: &meshfedv1.Service{
				Meta: &meshfedv1.Meta{Namespace: namespace, Name: n}, Port: 8443, Protocol: meshfedv1.Protocol_PROTOCOL_HTTP}})
			return err
		})
	}
	if err := run(jobs); err != nil {
		return fmt.Errorf("creating services: %w", err)
	}
	jobs = nil
	var mu sync.Mutex
	for _, n := range names {
		count := endpoints
		if n == propName || n == localName {
			count = 1
		}
		for j := range count {
			jobs = append(jobs, func(ctx context.Context) error {
				w, err := cc.CreateWorkload(ctx, &meshfedv1.CreateWorkloadRequest{Workload: workload(n, j)})
				if err != nil {
					return err
				}
				mu.Lock()
				defer mu.Unlock()
				switch n {
				case propName:
					f.prop = w
				case localName:
					f.local = w
				}
				return nil
			})
		}
		if n == localName {
			continue
		}
		jobs = append(jobs, func(ctx context.Context) error {
			_, err := pc.SetServiceExport(ctx, &meshfedv1.SetServiceExportRequest{Export: &meshfedv1.ServiceExport{
				Meta: &meshfedv1.Meta{Namespace: namespace, Name: n}, Peers: []string{"east"}}})
			return err
		})
	}
	if err := run(jobs); err != nil {
		return fmt.Errorf("creating workloads and exports: %w", err)
	}
	return nil
}

// peering reads east's side of the peering.
func (f *fed) peering(ctx context.Context) (*meshfedv1.Peering, error) {
	return meshfedv1.NewPeeringServiceClient(f.eLeader).GetPeering(ctx, &meshfedv1.GetRequest{Name: "west"})
}

// waitPeering polls east's peering every 5 ms until ok says so.
func (f *fed) waitPeering(ctx context.Context, what string, timeout time.Duration, ok func(*meshfedv1.Peering) bool) (*meshfedv1.Peering, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	var last *meshfedv1.Peering
	var lastErr error
	for {
		p, err := f.peering(ctx)
		if err == nil && ok(p) {
			return p, nil
		}
		if err == nil {
			last = p
		} else {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for %s: %w (last seen: state %v, %d imported, error %q; last error %v)",
				what, ctx.Err(), last.GetState(), last.GetImportedServices(), last.GetLastError(), lastErr)
		case <-tick.C:
		}
	}
}

// establish peers east with west and returns the time until east holds
// every exported service.
func (f *fed) establish(ctx context.Context, want int) (time.Duration, error) {
	start := time.Now()
	if _, err := meshfedv1.NewPeeringServiceClient(f.eLeader).EstablishPeering(ctx,
		&meshfedv1.EstablishPeeringRequest{Peer: "west", Token: f.token}); err != nil {
		return 0, err
	}
	_, err := f.waitPeering(ctx, fmt.Sprintf("%d imported services", want), 2*time.Minute, func(p *meshfedv1.Peering) bool {
		return synced(p, time.Time{}, want)
	})
	return time.Since(start), err
}

// synced says p is active, holds want imports and synced after since.
func synced(p *meshfedv1.Peering, since time.Time, want int) bool {
	return p.GetState() == meshfedv1.PeeringState_PEERING_STATE_ACTIVE && int(p.GetImportedServices()) == want &&
		p.GetLastSync() != nil && p.GetLastSync().AsTime().After(since)
}

// importedEndpoints counts the endpoints east imported.
func (f *fed) importedEndpoints(ctx context.Context) (int, error) {
	pc := meshfedv1.NewPeeringServiceClient(f.eLeader)
	n, page := 0, ""
	for {
		r, err := pc.ListImportedServices(ctx, &meshfedv1.ListRequest{Page: &meshfedv1.PageRequest{PageSize: 1000, PageToken: page}})
		if err != nil {
			return 0, err
		}
		for _, s := range r.GetServices() {
			n += len(s.GetEndpoints())
		}
		if page = r.GetNextPageToken(); page == "" {
			return n, nil
		}
	}
}

type reconnectResult struct {
	resync   time.Duration // from the new session's start to synced
	restored time.Duration // from the link's return to synced (adds the dialer's backoff)
}

// reconnect cuts the link, waits until east notices, restores it and times
// the full resync.
func (f *fed) reconnect(ctx context.Context, want int) (reconnectResult, error) {
	before, err := f.peering(ctx)
	if err != nil {
		return reconnectResult{}, err
	}
	since := before.GetLastSync().AsTime()
	for _, p := range f.proxies {
		p.cut()
	}
	if _, err := f.waitPeering(ctx, "east to see the link down", time.Minute, func(p *meshfedv1.Peering) bool {
		return p.GetState() == meshfedv1.PeeringState_PEERING_STATE_DISCONNECTED
	}); err != nil {
		return reconnectResult{}, err
	}
	restored := time.Now()
	for _, p := range f.proxies {
		p.restore()
	}
	if _, err := f.waitPeering(ctx, "the resync", 2*time.Minute, func(p *meshfedv1.Peering) bool {
		return synced(p, since, want)
	}); err != nil {
		return reconnectResult{}, err
	}
	done := time.Now()
	// The new session's start, as west records it: west's side syncs as
	// soon as the session opens, since east exports nothing. Both times
	// come from server clocks on this machine.
	east, err := f.peering(ctx)
	if err != nil {
		return reconnectResult{}, err
	}
	west, err := meshfedv1.NewPeeringServiceClient(f.wLeader).GetPeering(ctx, &meshfedv1.GetRequest{Name: "east"})
	if err != nil {
		return reconnectResult{}, err
	}
	if !west.GetLastSync().AsTime().After(restored) {
		return reconnectResult{}, fmt.Errorf("west's last sync %v is not after the link came back (%v)", west.GetLastSync().AsTime(), restored)
	}
	resync := east.GetLastSync().AsTime().Sub(west.GetLastSync().AsTime())
	return reconnectResult{resync: resync, restored: done.Sub(restored)}, nil
}

// cpu is the CPU time of each cluster's servers.
type cpu struct{ west, east time.Duration }

func (f *fed) cpuNow() (cpu, error) {
	w, err := harness.CPUTimes(f.west.Procs()...)
	if err != nil {
		return cpu{}, err
	}
	e, err := harness.CPUTimes(f.east.Procs()...)
	return cpu{w, e}, err
}

func (c cpu) sub(o cpu) cpu { return cpu{c.west - o.west, c.east - o.east} }

// idleRate is CPU per second of wall time with nothing to do.
type idleRate struct{ west, east float64 }

func (f *fed) idleCPU(ctx context.Context, d time.Duration) (idleRate, error) {
	a, err := f.cpuNow()
	if err != nil {
		return idleRate{}, err
	}
	start := time.Now()
	select {
	case <-ctx.Done():
		return idleRate{}, ctx.Err()
	case <-time.After(d):
	}
	b, err := f.cpuNow()
	if err != nil {
		return idleRate{}, err
	}
	wall := time.Since(start).Seconds()
	u := b.sub(a)
	return idleRate{u.west.Seconds() / wall, u.east.Seconds() / wall}, nil
}

type runResult struct {
	latencies []time.Duration // sorted
	wall      time.Duration
	cpu       cpu
}

// propagate changes prop's endpoint port n times in west and times each
// change until a WatchResolve stream on an east follower shows it.
func (f *fed) propagate(ctx context.Context, n int) (runResult, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := meshfedv1.NewCatalogServiceClient(f.eFollower).WatchResolve(wctx, &meshfedv1.ResolveRequest{Namespace: namespace, Name: propName})
	if err != nil {
		return runResult{}, err
	}
	type seen struct {
		port uint32
		at   time.Time
	}
	ports := make(chan seen, 64)
	go func() {
		defer close(ports)
		for {
			r, err := stream.Recv()
			if err != nil {
				return
			}
			at := time.Now()
			for _, c := range r.GetClusters() {
				if c.GetPeer() != "west" {
					continue
				}
				for _, e := range c.GetEndpoints() {
					select {
					case ports <- seen{e.GetPort(), at}:
					case <-wctx.Done():
						return
					}
				}
			}
		}
	}()
	await := func(port uint32) (time.Time, error) {
		timeout := time.NewTimer(10 * time.Second)
		defer timeout.Stop()
		for {
			select {
			case s, ok := <-ports:
				if !ok {
					return time.Time{}, errors.New("the watch ended")
				}
				if s.port == port {
					return s.at, nil
				}
			case <-timeout.C:
				return time.Time{}, fmt.Errorf("port %d not seen in east within 10s", port)
			}
		}
	}
	if _, err := await(f.prop.GetPort()); err != nil {
		return runResult{}, fmt.Errorf("first resolve: %w", err)
	}
	cc := meshfedv1.NewCatalogServiceClient(f.wLeader)
	res := runResult{}
	before, err := f.cpuNow()
	if err != nil {
		return res, err
	}
	start := time.Now()
	for i := range n {
		w := f.prop
		w.Port = uint32(20000 + i%40000)
		t0 := time.Now()
		if _, err := cc.UpdateWorkload(ctx, &meshfedv1.UpdateWorkloadRequest{Workload: w}); err != nil {
			return res, err
		}
		at, err := await(w.Port)
		if err != nil {
			return res, fmt.Errorf("change %d: %w", i+1, err)
		}
		res.latencies = append(res.latencies, at.Sub(t0))
	}
	res.wall = time.Since(start)
	after, err := f.cpuNow()
	if err != nil {
		return res, err
	}
	res.cpu = after.sub(before)
	slices.Sort(res.latencies)
	return res, nil
}

// localChanges makes n changes to a service nobody imports, each awaited
// only by its write.
func (f *fed) localChanges(ctx context.Context, n int) (runResult, error) {
	cc := meshfedv1.NewCatalogServiceClient(f.wLeader)
	res := runResult{}
	before, err := f.cpuNow()
	if err != nil {
		return res, err
	}
	start := time.Now()
	for i := range n {
		w := f.local
		w.Port = uint32(20000 + i%40000)
		t0 := time.Now()
		if _, err := cc.UpdateWorkload(ctx, &meshfedv1.UpdateWorkloadRequest{Workload: w}); err != nil {
			return res, err
		}
		res.latencies = append(res.latencies, time.Since(t0))
	}
	res.wall = time.Since(start)
	after, err := f.cpuNow()
	if err != nil {
		return res, err
	}
	res.cpu = after.sub(before)
	slices.Sort(res.latencies)
	return res, nil
}
