package controlplane

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/controlplane/state"
)

// A snapshot file is gzip of one JSON header line followed by the state
// store's own snapshot stream. The header lets restore refuse a snapshot of
// another cluster before touching anything.
type snapshotHeader struct {
	Format      int       `json:"format"`
	Cluster     string    `json:"cluster"`
	TrustDomain string    `json:"trust_domain"`
	Index       uint64    `json:"index"`
	Term        uint64    `json:"term"`
	Created     time.Time `json:"created"`
}

const (
	snapshotFormat    = 1
	snapshotChunkSize = 1 << 20
	// maxSnapshotSize bounds what a restore accepts (compressed).
	maxSnapshotSize = 4 << 30
)

// chunkWriter turns writes into SnapshotChunk messages.
type chunkWriter struct {
	send func(*meshfedv1.SnapshotChunk) error
}

func (c chunkWriter) Write(p []byte) (int, error) {
	for off := 0; off < len(p); off += snapshotChunkSize {
		end := min(off+snapshotChunkSize, len(p))
		if err := c.send(&meshfedv1.SnapshotChunk{Data: append([]byte(nil), p[off:end]...)}); err != nil {
			return off, err
		}
	}
	return len(p), nil
}

// SaveSnapshot streams a point-in-time copy of the leader's state.
func (a *apiServer) SaveSnapshot(req *meshfedv1.SaveSnapshotRequest, stream meshfedv1.ClusterService_SaveSnapshotServer) error {
	s := a.s
	ctx := stream.Context()
	if !s.isLeader() && !isForwarded(ctx) {
		return relayToLeader(ctx, s.fwd, func(ctx context.Context, conn *grpc.ClientConn) (grpc.ServerStreamingClient[meshfedv1.SnapshotChunk], error) {
			return meshfedv1.NewClusterServiceClient(conn).SaveSnapshot(ctx, req)
		}, stream.Send)
	}
	if err := s.consistentRead(ctx); err != nil {
		return err
	}
	st := s.store()
	snap := st.Snapshot()
	defer snap.Release()
	bw := bufio.NewWriterSize(chunkWriter{send: stream.Send}, snapshotChunkSize)
	zw := gzip.NewWriter(bw)
	hdr := snapshotHeader{Format: snapshotFormat, Cluster: s.cfg.Cluster, TrustDomain: s.cfg.TrustDomain,
		Index: st.LatestIndex(), Term: s.raft.CurrentTerm(), Created: time.Now().UTC()}
	if err := json.NewEncoder(zw).Encode(hdr); err != nil {
		return toStatus(err)
	}
	if err := snap.Persist(zw); err != nil {
		return toStatus(fmt.Errorf("writing snapshot: %w", err))
	}
	if err := zw.Close(); err != nil {
		return toStatus(err)
	}
	if err := bw.Flush(); err != nil {
		return toStatus(err)
	}
	s.log.Info("snapshot saved", "index", hdr.Index)
	return nil
}

// RestoreSnapshot replaces all state with a saved snapshot, through Raft so
// that every server installs it. The upload is spooled to a file first, so a
// broken upload changes nothing.
func (a *apiServer) RestoreSnapshot(stream meshfedv1.ClusterService_RestoreSnapshotServer) error {
	s := a.s
	ctx := stream.Context()
	if !s.isLeader() && !isForwarded(ctx) {
		conn, err := s.fwd.leaderConn(ctx)
		if err != nil {
			return err
		}
		up, err := meshfedv1.NewClusterServiceClient(conn).RestoreSnapshot(outgoing(ctx))
		if err != nil {
			return err
		}
		if err := recvChunks(stream, up.Send); err != nil {
			return err
		}
		resp, err := up.CloseAndRecv()
		if err != nil {
			return err
		}
		return stream.SendAndClose(resp)
	}

	f, err := os.CreateTemp(s.cfg.DataDir, "restore-*.snap")
	if err != nil {
		return toStatus(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	var size int64
	err = recvChunks(stream, func(c *meshfedv1.SnapshotChunk) error {
		size += int64(len(c.Data))
		if size > maxSnapshotSize {
			return status.Errorf(codes.InvalidArgument, "snapshot larger than %d bytes", maxSnapshotSize)
		}
		_, err := f.Write(c.Data)
		return toStatus(err)
	})
	if err != nil {
		return err
	}
	br, hdr, err := openSnapshot(f)
	if err != nil {
		return err
	}
	if hdr.Cluster != s.cfg.Cluster || hdr.TrustDomain != s.cfg.TrustDomain {
		return status.Errorf(codes.FailedPrecondition, "snapshot is of cluster %q (trust domain %q); this is %q (%q)",
			hdr.Cluster, hdr.TrustDomain, s.cfg.Cluster, s.cfg.TrustDomain)
	}
	// Validate the whole payload before Raft sees it: a truncated or
	// corrupt file must fail here, not half way through an install.
	counted := &countingReader{r: br}
	if err := verifySnapshotPayload(counted); err != nil {
		return status.Errorf(codes.InvalidArgument, "corrupt snapshot: %v", err)
	}
	if br, _, err = openSnapshot(f); err != nil {
		return err
	}
	// Raft checks that the size it is told matches what it stores: the
	// uncompressed payload.
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Index: hdr.Index, Term: hdr.Term, Size: counted.n}
	if err := s.raft.Restore(meta, br, time.Minute); err != nil {
		return toStatus(fmt.Errorf("restoring snapshot: %w", err))
	}
	s.log.Info("snapshot restored", "snapshot_index", hdr.Index, "index", s.raft.LastIndex())
	// The restored records name the servers of the saved cluster; register
	// this leader's own addresses at once so followers forward to it.
	if err := s.ensureServerRecord(ctx, s.cfg.NodeID, s.cfg.APIAdvertiseAddr, s.cfg.RaftAdvertiseAddr, s.cfg.HTTPAddr); err != nil {
		s.log.Warn("registering leader after restore", "error", err)
	}
	return stream.SendAndClose(&meshfedv1.RestoreSnapshotResponse{Index: s.raft.LastIndex()})
}

// verifySnapshotPayload decodes a store snapshot into a scratch store.
func verifySnapshotPayload(r io.Reader) error {
	scratch, err := state.NewStore()
	if err != nil {
		return err
	}
	return scratch.Restore(r)
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// recvChunks passes every chunk of a client stream to handle until EOF.
func recvChunks(stream interface {
	Recv() (*meshfedv1.SnapshotChunk, error)
}, handle func(*meshfedv1.SnapshotChunk) error) error {
	for {
		c, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := handle(c); err != nil {
			return err
		}
	}
}

// openSnapshot reads a snapshot file from its start: it checks the gzip
// stream and the header line and returns a reader at the state payload.
func openSnapshot(f *os.File) (*bufio.Reader, snapshotHeader, error) {
	var hdr snapshotHeader
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, hdr, toStatus(err)
	}
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, hdr, status.Errorf(codes.InvalidArgument, "not a meshfed snapshot: %v", err)
	}
	br := bufio.NewReader(zr)
	line, err := br.ReadBytes('\n')
	if err != nil {
		return nil, hdr, status.Errorf(codes.InvalidArgument, "not a meshfed snapshot: %v", err)
	}
	if err := json.Unmarshal(line, &hdr); err != nil || hdr.Format != snapshotFormat {
		return nil, hdr, status.Error(codes.InvalidArgument, "not a meshfed snapshot (bad header)")
	}
	return br, hdr, nil
}
