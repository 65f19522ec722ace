package controlplane

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"

	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/ca"
	"github.com/meshfed/meshfed/controlplane/state"
)

// Files a bootstrap server writes into its data dir.
const (
	fileAdminToken = "admin.token"
	fileEnv        = "env"
	// fileBootstrap holds the records the first leader writes through Raft
	// (cluster identity, first authority, admin token hash). It exists only
	// between bootstrap and the first leadership, so that a crash in between
	// loses nothing.
	fileBootstrap = "bootstrap.pending"
)

// clusterRecordName is the name of the one ClusterRecord.
const clusterRecordName = "cluster"

// prepareBootstrap creates the cluster's first authority, this server's
// certificate and the admin token, before Raft starts.
func (s *Server) prepareBootstrap() error {
	auth, err := ca.GenerateAuthority(ca.GenerateParams{TrustDomain: s.td, IntermediateTTL: s.cfg.intermediateTTL})
	if err != nil {
		return fmt.Errorf("creating cluster CA: %w", err)
	}
	auth.Authority.State = meshfedv1.AuthorityState_AUTHORITY_STATE_ACTIVE
	auth.Authority.StateTime = timestamppb.Now()
	if err := s.ca.SetAuthorities([]*meshfedv1.StoredAuthority{auth}); err != nil {
		return err
	}
	if err := s.id.signLocally(); err != nil {
		return fmt.Errorf("issuing server certificate: %w", err)
	}
	secret, hash, err := newSecret()
	if err != nil {
		return err
	}
	accessor, err := newAccessorID()
	if err != nil {
		return err
	}
	admin := &meshfedv1.Token{
		Meta:        &meshfedv1.Meta{Name: accessor},
		Kind:        meshfedv1.TokenKind_TOKEN_KIND_ADMIN,
		Description: "bootstrap admin token",
		SecretHash:  hash,
	}
	cluster := &meshfedv1.ClusterRecord{
		Meta:        &meshfedv1.Meta{Name: clusterRecordName},
		Cluster:     s.cfg.Cluster,
		TrustDomain: s.cfg.TrustDomain,
	}
	var buf bytes.Buffer
	for _, m := range []state.Resource{cluster, auth, admin} {
		kind, _ := state.KindOf(m)
		payload, err := proto.Marshal(m)
		if err != nil {
			return err
		}
		if _, err := protodelim.MarshalTo(&buf, &meshfedv1.SnapshotRecord{Kind: kind, Payload: payload}); err != nil {
			return err
		}
	}
	if err := writeFileAtomic(s.path(fileBootstrap), buf.Bytes(), 0o600); err != nil {
		return err
	}
	if err := writeFileAtomic(s.path(fileAdminToken), []byte(secret+"\n"), 0o600); err != nil {
		return err
	}
	env := fmt.Sprintf("export MESHFED_ADDR=%s MESHFED_TOKEN=%s MESHFED_CA_FILE=%s\n", s.cfg.APIAddr, secret, s.path(fileCABundle))
	return writeFileAtomic(s.path(fileEnv), []byte(env), 0o600)
}

// readBootstrapRecords returns the records of a pending bootstrap, or nil.
func (s *Server) readBootstrapRecords() ([]*meshfedv1.SnapshotRecord, error) {
	f, err := os.Open(s.path(fileBootstrap))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := bufio.NewReader(f)
	var out []*meshfedv1.SnapshotRecord
	for {
		rec := &meshfedv1.SnapshotRecord{}
		if err := protodelim.UnmarshalFrom(r, rec); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, fmt.Errorf("reading %s: %w", fileBootstrap, err)
		}
		out = append(out, rec)
	}
}

// printEnv writes the export line of a bootstrap server to cfg.Out.
func (s *Server) printEnv() {
	if s.cfg.Out == nil {
		return
	}
	data, err := os.ReadFile(s.path(fileEnv))
	if err != nil {
		return
	}
	fmt.Fprint(s.cfg.Out, string(data))
}

// newSecret returns a random token secret and its SHA-256. Secrets carry 256
// bits of entropy, so a plain hash is enough to store them safely.
func newSecret() (string, []byte, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", nil, err
	}
	secret := "mfd_" + base64.RawURLEncoding.EncodeToString(b)
	return secret, hashSecret(secret), nil
}

func hashSecret(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// newAccessorID returns a token's public ID.
func newAccessorID() (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return "tok-" + hex.EncodeToString(b), nil
}
