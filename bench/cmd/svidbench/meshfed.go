package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/durationpb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/bench/internal/harness"
)

// meshfedSys is a 3-server meshfed cluster and the workloads that attested
// to it.
type meshfedSys struct {
	c       *harness.MeshfedCluster
	td      string
	workers []*meshfedWorker
	issued  atomic.Int64
	// freshCSR: every request carries a new key's CSR, made in Prepare.
	freshCSR bool
	lifetime time.Duration // NotAfter-NotBefore of the first renewed SVID
}

func (*meshfedSys) Name() string { return "meshfed" }

func (m *meshfedSys) Procs() []*harness.Proc { return m.c.Procs() }

func (m *meshfedSys) Issued() int64 { return m.issued.Load() }

func (m *meshfedSys) Workers(n int) []worker {
	out := make([]worker, n)
	for i := range out {
		out[i] = m.workers[i]
	}
	return out
}

func (m *meshfedSys) close() {
	for _, w := range m.workers {
		if w != nil && w.conn != nil {
			w.conn.Close()
		}
	}
}

// setup gives every workload an SVID the way a proxy gets one: the admin
// creates a single-use workload-join token bound to the workload's SPIFFE
// ID, and the workload attests with it and its CSR over server-only TLS.
// Then each workload opens its own mutual-TLS connection, presenting that
// SVID, to one of the servers (workload i to server i mod 3) and renews
// once over it, so that the connection is up before anything is measured.
func (m *meshfedSys) setup(ctx context.Context, keys []workloadKey) error {
	leader, err := m.c.Leader(ctx)
	if err != nil {
		return err
	}
	m.td = m.c.TrustDomain
	if m.td == "" {
		return errors.New("GetClusterStatus reports no trust domain")
	}
	admin, err := harness.DialMeshfed(leader, m.c.CAPEM, m.c.Token)
	if err != nil {
		return err
	}
	defer admin.Close()
	tokens := meshfedv1.NewTokenServiceClient(admin)
	// Attest needs no bearer token: the join token is in the request.
	var attestConns []*grpc.ClientConn
	defer func() {
		for _, c := range attestConns {
			c.Close()
		}
	}()
	for _, s := range m.c.Servers {
		conn, err := harness.DialMeshfed(s.API, m.c.CAPEM, "")
		if err != nil {
			return err
		}
		attestConns = append(attestConns, conn)
	}
	m.workers = make([]*meshfedWorker, len(keys))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for i, k := range keys {
		g.Go(func() error {
			id := workloadID(m.td, i)
			csr, err := csrDER(k.key, id)
			if err != nil {
				return err
			}
			tok, err := tokens.CreateToken(gctx, &meshfedv1.CreateTokenRequest{
				Kind:        meshfedv1.TokenKind_TOKEN_KIND_WORKLOAD_JOIN,
				Description: "svidbench",
				SpiffeId:    id,
				MaxUses:     1,
				Ttl:         durationpb.New(30 * time.Minute),
			})
			if err != nil {
				return fmt.Errorf("CreateToken for %s: %w", id, err)
			}
			srv := m.c.Servers[i%len(m.c.Servers)]
			resp, err := meshfedv1.NewWorkloadIdentityServiceClient(attestConns[i%len(attestConns)]).Attest(gctx,
				&meshfedv1.AttestRequest{Token: tok.GetSecret(), Csr: csr})
			if err != nil {
				return fmt.Errorf("Attest as %s on %s: %w", id, srv.ID, err)
			}
			svid, _, err := checkSVID([]byte(resp.GetCertificateChainPem()), []byte(resp.GetBundlePem()), id, k.key)
			if err != nil {
				return fmt.Errorf("Attest as %s on %s: %w", id, srv.ID, err)
			}
			w, err := m.newWorker(srv, svid, id, csr)
			if err != nil {
				return err
			}
			m.workers[i] = w
			r, err := w.renew(gctx)
			if err != nil {
				return fmt.Errorf("Renew as %s on %s: %w", id, srv.ID, err)
			}
			_, leaf, err := checkSVID([]byte(r.GetCertificateChainPem()), []byte(r.GetBundlePem()), id, k.key)
			if err != nil {
				return fmt.Errorf("Renew as %s on %s: %w", id, srv.ID, err)
			}
			if i == 0 {
				m.lifetime = leaf.NotAfter.Sub(leaf.NotBefore)
			}
			return nil
		})
	}
	return g.Wait()
}

// newWorker opens the workload's own connection: mutual TLS with its SVID
// as the client certificate, no bearer token.
func (m *meshfedSys) newWorker(srv *harness.MeshfedServer, svid tls.Certificate, id string, csr []byte) (*meshfedWorker, error) {
	cfg, err := harness.MeshfedTLS(m.c.CAPEM)
	if err != nil {
		return nil, err
	}
	cfg.Certificates = []tls.Certificate{svid}
	conn, err := grpc.NewClient(srv.API, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		return nil, err
	}
	conn.Connect()
	return &meshfedWorker{sys: m, conn: conn, cl: meshfedv1.NewWorkloadIdentityServiceClient(conn),
		id: id, req: &meshfedv1.RenewRequest{Csr: csr}}, nil
}

// meshfedWorker is one workload's client of meshfed.
type meshfedWorker struct {
	sys  *meshfedSys
	conn *grpc.ClientConn
	cl   meshfedv1.WorkloadIdentityServiceClient
	id   string
	req  *meshfedv1.RenewRequest
	// queued holds the CSRs Prepare made when every request gets a new key.
	queued [][]byte
}

// Prepare has nothing to do unless every request gets a new key: the CSR
// was made in setup and a renewal needs no token.
func (w *meshfedWorker) Prepare() error {
	if !w.sys.freshCSR {
		return nil
	}
	csr, err := freshCSR(w.id)
	if err != nil {
		return err
	}
	w.queued = append(w.queued, csr)
	return nil
}

func (w *meshfedWorker) Issue(ctx context.Context) error {
	if w.sys.freshCSR {
		if len(w.queued) == 0 {
			return errors.New("no prepared request")
		}
		w.req = &meshfedv1.RenewRequest{Csr: w.queued[0]}
		w.queued = w.queued[1:]
	}
	r, err := w.renew(ctx)
	if err != nil {
		return err
	}
	if !hasCertificatePEM(r.GetCertificateChainPem()) {
		return errors.New("Renew answered without a certificate")
	}
	return nil
}

func (w *meshfedWorker) renew(ctx context.Context) (*meshfedv1.SVIDResponse, error) {
	r, err := w.cl.Renew(ctx, w.req)
	if err == nil {
		w.sys.issued.Add(1)
	}
	return r, err
}

// Warm waits until the workload's connection is up.
func (w *meshfedWorker) Warm(ctx context.Context) error {
	for {
		st := w.conn.GetState()
		switch st {
		case connectivity.Ready:
			return nil
		case connectivity.Idle:
			w.conn.Connect()
		}
		if !w.conn.WaitForStateChange(ctx, st) {
			return fmt.Errorf("connection to %s: %v (%w)", w.conn.Target(), st, ctx.Err())
		}
	}
}
