package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/ca"
	mfid "github.com/meshfed/meshfed/internal/spiffeid"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

// raftAppendEntriesProbe is the first bytes a Raft peer sends: the RPC type
// byte (AppendEntries) followed by msgpack. A Raft port that answered it
// without TLS would be exposed.
var raftAppendEntriesProbe = []byte{0, 0x8a, 0xa4, 'T', 'e', 'r', 'm', 1}

// foreignServerCert makes a server certificate for the same node ID from a CA
// the cluster does not trust.
func foreignServerCert(t *testing.T, td string) tls.Certificate {
	t.Helper()
	trust := spiffeid.RequireTrustDomainFromString(td)
	auth, err := ca.GenerateAuthority(ca.GenerateParams{TrustDomain: trust})
	if err != nil {
		t.Fatal(err)
	}
	auth.Authority.State = meshfedv1.AuthorityState_AUTHORITY_STATE_ACTIVE
	other, err := ca.New(ca.Config{TrustDomain: trust})
	if err != nil {
		t.Fatal(err)
	}
	if err := other.SetAuthorities([]*meshfedv1.StoredAuthority{auth}); err != nil {
		t.Fatal(err)
	}
	id, _ := mfid.Server(trust, "s2")
	csr, key, err := ca.NewServerCSR(id, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := other.Sign(ca.SignParams{CSR: csr, ID: id, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return cert
}

// refused reports whether the server closes the connection without sending
// anything back. A connection the server accepted stays open and silent, so
// the read times out instead.
func refused(conn net.Conn, probe []byte) bool {
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if probe != nil {
		_, _ = conn.Write(probe)
	}
	buf := make([]byte, 64)
	n, err := conn.Read(buf)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return n == 0 && err != nil
}

func TestRaftPortRefusesClientsWithoutServerCertificate(t *testing.T) {
	c := startTestCluster(t, 1)
	s1 := c.servers[0]
	roots, err := tlsutil.ParseCertificatesPEM(c.caPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	addr := s1.cfg.RaftAddr

	t.Run("plain TCP", func(t *testing.T) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if !refused(conn, raftAppendEntriesProbe) {
			t.Fatal("raft port answered plain TCP")
		}
	})
	t.Run("TLS without client certificate", func(t *testing.T) {
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13})
		if err != nil {
			return // refused during the handshake
		}
		defer conn.Close()
		if !refused(conn, nil) {
			t.Fatal("raft port accepted a client without a certificate")
		}
	})
	t.Run("TLS with a certificate from another CA", func(t *testing.T) {
		cert := foreignServerCert(t, s1.cfg.TrustDomain)
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
		if err != nil {
			return
		}
		defer conn.Close()
		if !refused(conn, nil) {
			t.Fatal("raft port accepted a certificate from another CA")
		}
	})
	t.Run("control: a server certificate of this cluster is accepted", func(t *testing.T) {
		id, _ := mfid.Server(s1.srv.td, "s9")
		csr, key, err := ca.NewServerCSR(id, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		chain, err := s1.srv.ca.Sign(ca.SignParams{CSR: csr, ID: id, TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		cert := tls.Certificate{PrivateKey: key}
		for _, c := range chain {
			cert.Certificate = append(cert.Certificate, c.Raw)
		}
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if refused(conn, nil) {
			t.Fatal("raft port refused a valid server certificate")
		}
	})
	t.Run("TLS 1.2", func(t *testing.T) {
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MaxVersion: tls.VersionTLS12})
		if err == nil {
			conn.Close()
			t.Fatal("raft port negotiated TLS 1.2")
		}
	})
}

func TestAPIPortRefusesPlaintext(t *testing.T) {
	c := startTestCluster(t, 1)
	s1 := c.servers[0]
	conn, err := grpc.NewClient(s1.cfg.APIAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = meshfedv1.NewClusterServiceClient(conn).GetClusterStatus(ctx, &meshfedv1.GetClusterStatusRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("plaintext call: %v, want Unavailable", err)
	}
	// A TLS client that does not trust the cluster CA fails too.
	tc := credentials.NewTLS(&tls.Config{RootCAs: x509.NewCertPool(), MinVersion: tls.VersionTLS13})
	conn2, err := grpc.NewClient(s1.cfg.APIAddr, grpc.WithTransportCredentials(tc))
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	_, err = meshfedv1.NewClusterServiceClient(conn2).GetClusterStatus(ctx, &meshfedv1.GetClusterStatusRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("untrusted TLS call: %v, want Unavailable", err)
	}
	// A standard TLS client with the cluster's ca.pem verifies the server by IP.
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.caPEM)
	raw, err := tls.Dial("tcp", s1.cfg.APIAddr, &tls.Config{RootCAs: pool, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatalf("standard TLS verification against ca.pem: %v", err)
	}
	raw.Close()
}
