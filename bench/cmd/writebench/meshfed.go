package main

import (
	"context"
	"fmt"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/bench/internal/harness"
)

// upsertBenchService creates the service the bench workloads belong to, in
// case the server insists on it.
func upsertBenchService(ctx context.Context, addr string, caPEM []byte, token string) error {
	conn, err := harness.DialMeshfed(addr, caPEM, token)
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = meshfedv1.NewCatalogServiceClient(conn).UpdateService(ctx, &meshfedv1.UpdateServiceRequest{
		Service: &meshfedv1.Service{
			Meta:     &meshfedv1.Meta{Name: benchService, Namespace: benchNamespace},
			Port:     8080,
			Protocol: meshfedv1.Protocol_PROTOCOL_HTTP,
		},
		AllowMissing: true,
	})
	return err
}

const (
	benchService   = "bench"
	benchNamespace = "default"
)

type meshfedSystem struct{ c *harness.MeshfedCluster }

func (meshfedSystem) Name() string { return "meshfed" }

func (s meshfedSystem) Open(ctx context.Context, conns int) ([]Target, error) {
	leader, err := s.c.Leader(ctx)
	if err != nil {
		return nil, err
	}
	return openMeshfedTargets(leader, s.c.CAPEM, s.c.Token, conns)
}

func openMeshfedTargets(addr string, caPEM []byte, token string, conns int) ([]Target, error) {
	var ts []Target
	for range conns {
		conn, err := harness.DialMeshfed(addr, caPEM, token)
		if err != nil {
			closeTargets(ts)
			return nil, err
		}
		// Connect now so that no measured write pays for the handshake.
		conn.Connect()
		ts = append(ts, &meshfedTarget{conn: conn, cat: meshfedv1.NewCatalogServiceClient(conn)})
	}
	return ts, nil
}

type meshfedTarget struct {
	conn *grpc.ClientConn
	cat  meshfedv1.CatalogServiceClient
}

func (t *meshfedTarget) Write(ctx context.Context, key string, value []byte) error {
	_, err := t.cat.UpdateWorkload(ctx, &meshfedv1.UpdateWorkloadRequest{
		Workload:     benchWorkload(key, value),
		AllowMissing: true,
	})
	return err
}

func (t *meshfedTarget) Close() error { return t.conn.Close() }

// padChunk keeps label values within Kubernetes' 63-character limit.
const padChunk = 60

// benchWorkload carries value in labels, split into valid label values, so
// that the stored record has the payload's size and content. The value must
// be label-safe (lower-case letters and digits).
func benchWorkload(key string, value []byte) *meshfedv1.Workload {
	labels := make(map[string]string, len(value)/padChunk+1)
	for i := 0; i*padChunk < len(value); i++ {
		labels[fmt.Sprintf("pad%d", i)] = string(value[i*padChunk : min(len(value), (i+1)*padChunk)])
	}
	return &meshfedv1.Workload{
		Meta:    &meshfedv1.Meta{Name: key, Namespace: benchNamespace, Labels: labels},
		Service: benchService,
		Address: "127.0.0.1",
		Port:    8080,
		Health:  meshfedv1.HealthStatus_HEALTH_STATUS_HEALTHY,
	}
}

// meshfedPayload returns the longest prefix of value whose workload, with a
// key of the given length, marshals to at most size bytes.
func meshfedPayload(keyLen, size int, value []byte) []byte {
	key := strings.Repeat("k", keyLen)
	for n := len(value); n > 0; n-- {
		if proto.Size(benchWorkload(key, value[:n])) <= size {
			return value[:n]
		}
	}
	return nil
}

func workloadSize(key string, value []byte) int { return proto.Size(benchWorkload(key, value)) }
