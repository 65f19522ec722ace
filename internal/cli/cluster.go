package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/client"
)

func (a *app) membersCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "members",
		Short: "List the servers of the cluster",
		Long: `List the cluster's servers with their Raft role, health as judged by
autopilot, time since the leader last heard from them, and log index.`,
		Example: "  meshfed members\n  meshfed members -o json",
		Args:    exactArgs(),
		RunE: a.withClient(func(ctx context.Context, c *client.Client, _ []string) error {
			resp, err := c.Cluster.ListMembers(ctx, &meshfedv1.ListMembersRequest{})
			if err != nil {
				return err
			}
			if a.isJSON() {
				return a.printListJSON(resp, "members")
			}
			t := newTable(a.stdout, "NODE", "API-ADDR", "RAFT-ADDR", "VOTER", "LEADER", "HEALTHY", "STATUS", "LAST-CONTACT", "LAST-INDEX")
			for _, m := range resp.GetMembers() {
				t.row(m.GetNodeId(), m.GetApiAddr(), m.GetRaftAddr(), formatBool(m.GetVoter()), formatBool(m.GetLeader()),
					formatBool(m.GetHealthy()), m.GetStatus(), formatDuration(m.GetLastContact()), formatUint(m.GetLastIndex()))
			}
			return t.flush()
		}),
	}
}

func (a *app) statusCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "status",
		Short:   "Show the cluster's status as seen by the server answering",
		Example: "  meshfed status\n  meshfed status -o json",
		Args:    exactArgs(),
		RunE: a.withClient(func(ctx context.Context, c *client.Client, _ []string) error {
			s, err := c.Cluster.GetClusterStatus(ctx, &meshfedv1.GetClusterStatusRequest{})
			if err != nil {
				return err
			}
			if a.isJSON() {
				return a.printJSON(s)
			}
			return keyValues(a.stdout,
				"Cluster", s.GetCluster(),
				"Trust domain", s.GetTrustDomain(),
				"Node", s.GetNodeId(),
				"Raft state", s.GetRaftState(),
				"Leader", s.GetLeaderId(),
				"Leader API address", s.GetLeaderApiAddr(),
				"Term", formatUint(s.GetTerm()),
				"Last index", formatUint(s.GetLastIndex()),
				"Commit index", formatUint(s.GetCommitIndex()),
				"Applied index", formatUint(s.GetAppliedIndex()),
				"Voters", formatUint(uint64(s.GetVoters())),
				"Healthy", formatBool(s.GetHealthy()),
				"Failure tolerance", formatUint(uint64(s.GetFailureTolerance())),
				"Version", s.GetVersion(),
			)
		}),
	}
}

func (a *app) joinTokenCommand() *cobra.Command {
	var (
		ttl         time.Duration
		uses        uint32
		description string
	)
	cmd := &cobra.Command{
		Use:   "join-token",
		Short: "Create a token that lets a new server join the cluster",
		Long: `Create a server-join token (needs an admin token) and print only its secret,
to be passed to the new server as --join-token. -o json prints the whole
token.`,
		Example: `  T=$(meshfed server join-token --ttl 30m --uses 1)
  meshfed server --data-dir /var/lib/meshfed --node-id s2 --cluster east \
      --api-addr 10.0.0.2:7700 --raft-addr 10.0.0.2:7701 --http-addr 10.0.0.2:7702 \
      --join 10.0.0.1:7700 --join-token "$T" --ca-file ca.pem`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := tokenLimits(ttl)
			if err != nil {
				return err
			}
			req := &meshfedv1.CreateTokenRequest{
				Kind: meshfedv1.TokenKind_TOKEN_KIND_SERVER_JOIN, Description: description, Ttl: d, MaxUses: uses,
			}
			return a.withClient(func(ctx context.Context, c *client.Client, _ []string) error {
				return a.createToken(ctx, c, req)
			})(cmd, args)
		},
	}
	f := cmd.Flags()
	f.DurationVar(&ttl, "ttl", 30*time.Minute, "time to live")
	f.Uint32Var(&uses, "uses", 1, "how many servers may join with it (0: unlimited)")
	f.StringVar(&description, "description", "", "free-form description")
	return cmd
}

func (a *app) snapshotCommand() *cobra.Command {
	cmd := asGroup(&cobra.Command{
		Use:   "snapshot",
		Short: "Save and restore a snapshot of all cluster state",
	})
	cmd.AddCommand(a.snapshotSaveCommand(), a.snapshotRestoreCommand())
	return cmd
}

// snapshotResult is the JSON document of snapshot save and restore.
type snapshotResult struct {
	File  string `json:"file"`
	Bytes int64  `json:"bytes"`
	Index uint64 `json:"index,omitempty,string"`
}

func (a *app) snapshotSaveCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "save FILE",
		Short: "Save a point-in-time snapshot of all state to FILE",
		Long: `Stream a snapshot of all replicated state (it includes the CA's private
keys: keep it safe) into FILE. The file is written to a temporary name with
mode 0600 and renamed into place only once complete.`,
		Example: "  meshfed snapshot save backup.snap",
		Args:    exactArgs("FILE"),
		RunE: a.withClient(func(ctx context.Context, c *client.Client, args []string) error {
			path := args[0]
			stream, err := c.Cluster.SaveSnapshot(ctx, &meshfedv1.SaveSnapshotRequest{})
			if err != nil {
				return err
			}
			n, err := writeFileAtomic(path, 0o600, func(w io.Writer) (int64, error) {
				var total int64
				for {
					chunk, err := stream.Recv()
					if errors.Is(err, io.EOF) {
						return total, nil
					}
					if err != nil {
						return total, err
					}
					k, err := w.Write(chunk.GetData())
					total += int64(k)
					if err != nil {
						return total, err
					}
				}
			})
			if err != nil {
				return err
			}
			if a.isJSON() {
				return a.printValueJSON(snapshotResult{File: path, Bytes: n})
			}
			_, err = fmt.Fprintf(a.stdout, "Saved snapshot to %s (%d bytes)\n", path, n)
			return err
		}),
	}
}

// snapshotChunkSize is the size of the chunks a restore streams; well below
// the API's message size limit.
const snapshotChunkSize = 1 << 20

func (a *app) snapshotRestoreCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "restore FILE",
		Short: "Replace all cluster state with a saved snapshot",
		Long: `Replace all replicated state with the snapshot in FILE. Every watcher
(proxies, peers, --watch) is woken with the restored state.`,
		Example: "  meshfed snapshot restore backup.snap",
		Args:    exactArgs("FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			return a.withClient(func(ctx context.Context, c *client.Client, args []string) error {
				stream, err := c.Cluster.RestoreSnapshot(ctx)
				if err != nil {
					return err
				}
				buf := make([]byte, snapshotChunkSize)
				var total int64
				for {
					k, rerr := io.ReadFull(f, buf)
					if k > 0 {
						if err := stream.Send(&meshfedv1.SnapshotChunk{Data: buf[:k]}); err != nil {
							if errors.Is(err, io.EOF) {
								// The server ended the stream; its error comes from CloseAndRecv.
								break
							}
							return err
						}
						total += int64(k)
					}
					if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
						break
					}
					if rerr != nil {
						stream.CloseSend()
						return fmt.Errorf("reading %s: %w", args[0], rerr)
					}
				}
				resp, err := stream.CloseAndRecv()
				if err != nil {
					return err
				}
				if a.isJSON() {
					return a.printValueJSON(snapshotResult{File: args[0], Bytes: total, Index: resp.GetIndex()})
				}
				_, err = fmt.Fprintf(a.stdout, "Restored snapshot from %s (%d bytes, index %d)\n", args[0], total, resp.GetIndex())
				return err
			})(cmd, args)
		},
	}
}

// writeFileAtomic writes path through a temporary file in the same directory
// with the given mode, syncs it and renames it into place, so that path
// never holds a partial file. On error the temporary file is removed.
func writeFileAtomic(path string, mode os.FileMode, write func(io.Writer) (int64, error)) (int64, error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return 0, err
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(mode); err != nil {
		return 0, err
	}
	n, err := write(tmp)
	if err != nil {
		return n, err
	}
	if err := tmp.Sync(); err != nil {
		return n, err
	}
	if err := tmp.Close(); err != nil {
		return n, err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return n, err
	}
	ok = true
	return n, nil
}
