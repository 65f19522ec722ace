package federation

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

func rootPEM(t *testing.T, ca bool) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "root"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: ca, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return string(tlsutil.EncodeCertificatesPEM([]*x509.Certificate{c}))
}

func TestTokenRoundTripAndRejects(t *testing.T) {
	now := time.Now()
	good := Token{Cluster: "east", TrustDomain: "east.mesh", APIAddresses: []string{"127.0.0.1:7700"}, CABundle: rootPEM(t, true),
		Secret: "mfd_x", ExpireTime: now.Add(time.Hour)}
	enc, err := good.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeToken(" "+enc+"\n", now)
	if err != nil || got.Cluster != "east" || got.Secret != "mfd_x" {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	edit := func(f func(*Token)) string {
		tok := good
		f(&tok)
		s, err := tok.Encode()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	for name, tc := range map[string]struct {
		token string
		want  error
		field string
	}{
		"empty":         {"", ErrInvalidToken, "does not start"},
		"wrong prefix":  {"abc." + strings.TrimPrefix(enc, tokenPrefix), ErrInvalidToken, "does not start"},
		"not base64":    {tokenPrefix + "!!!", ErrInvalidToken, "illegal"},
		"not JSON":      {tokenPrefix + "bm90IGpzb24", ErrInvalidToken, "invalid character"},
		"no cluster":    {edit(func(t *Token) { t.Cluster = "" }), ErrInvalidToken, "cluster"},
		"bad td":        {edit(func(t *Token) { t.TrustDomain = "Bad TD" }), ErrInvalidToken, "trust_domain"},
		"no addresses":  {edit(func(t *Token) { t.APIAddresses = nil }), ErrInvalidToken, "api_addresses"},
		"bad address":   {edit(func(t *Token) { t.APIAddresses = []string{"nowhere"} }), ErrInvalidToken, "host:port"},
		"no bundle":     {edit(func(t *Token) { t.CABundle = "" }), ErrInvalidToken, "ca_bundle"},
		"leaf bundle":   {edit(func(tk *Token) { tk.CABundle = rootPEM(t, false) }), ErrInvalidToken, "not a CA"},
		"no secret":     {edit(func(t *Token) { t.Secret = "" }), ErrInvalidToken, "secret"},
		"expired":       {edit(func(t *Token) { t.ExpireTime = now.Add(-time.Second) }), ErrTokenExpired, "expired"},
		"too long":      {tokenPrefix + strings.Repeat("A", maxTokenLen), ErrInvalidToken, "longer"},
		"unknown field": {tokenPrefix + "eyJ4IjoxfQ", ErrInvalidToken, "unknown field"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := DecodeToken(tc.token, now)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("DecodeToken: %v, want %v mentioning %q", err, tc.want, tc.field)
			}
		})
	}
}

// pipe is one end of an in-memory peer stream.
type pipe struct {
	in  chan *meshfedv1.PeerMessage
	out chan *meshfedv1.PeerMessage
}

func (p pipe) Send(m *meshfedv1.PeerMessage) error { p.out <- m; return nil }
func (p pipe) Recv() (*meshfedv1.PeerMessage, error) {
	m, ok := <-p.in
	if !ok {
		return nil, io.EOF
	}
	return m, nil
}

// recorder is a Local that records what a session stores.
type recorder struct {
	mu      sync.Mutex
	imports map[string]*meshfedv1.ImportedService
	bundles int
	synced  int
	batches int
}

func (r *recorder) Exports(ctx context.Context, peer string) (map[string]*meshfedv1.ImportedService, <-chan struct{}, error) {
	return nil, ctx.Done(), nil
}
func (r *recorder) Bundle(ctx context.Context) (*meshfedv1.TrustBundle, <-chan struct{}, error) {
	return &meshfedv1.TrustBundle{TrustDomain: "east.mesh", Sequence: 1}, ctx.Done(), nil
}
func (r *recorder) StoreBundle(context.Context, string, *meshfedv1.TrustBundle) error {
	r.mu.Lock()
	r.bundles++
	r.mu.Unlock()
	return nil
}
func (r *recorder) ApplyImports(_ context.Context, _ string, changes []ImportChange) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.batches++
	for _, c := range changes {
		if c.Service != nil {
			r.imports[c.Key()] = c.Service
		} else {
			delete(r.imports, c.Key())
		}
	}
	return nil
}
func (r *recorder) Synced(context.Context, string, map[string]bool) error {
	r.mu.Lock()
	r.synced++
	r.mu.Unlock()
	return nil
}
func (r *recorder) BundleAcked(string, uint64)                   {}
func (r *recorder) Closed(context.Context, string, string) error { return nil }

func TestSessionRefusesBadPeerMessages(t *testing.T) {
	west := spiffeid.RequireTrustDomainFromString("west.mesh")
	svc := func(id string) *meshfedv1.ImportedService {
		return &meshfedv1.ImportedService{Meta: &meshfedv1.Meta{Namespace: "default", Name: "payments"},
			Service:   &meshfedv1.Service{Meta: &meshfedv1.Meta{Namespace: "default", Name: "payments"}},
			Endpoints: []*meshfedv1.Endpoint{{Address: "10.0.0.1", Port: 8443, SpiffeId: id}}}
	}
	many := svc("spiffe://west.mesh/ns/default/sa/payments")
	for len(many.Endpoints) <= MaxEndpoints {
		many.Endpoints = append(many.Endpoints, many.Endpoints[0])
	}
	for name, m := range map[string]*meshfedv1.PeerMessage{
		"endpoint of another trust domain": {Message: &meshfedv1.PeerMessage_ServiceUpsert{ServiceUpsert: svc("spiffe://east.mesh/ns/default/sa/payments")}},
		"endpoint without SPIFFE ID":       {Message: &meshfedv1.PeerMessage_ServiceUpsert{ServiceUpsert: svc("")}},
		"too many endpoints":               {Message: &meshfedv1.PeerMessage_ServiceUpsert{ServiceUpsert: many}},
		"bad service name": {Message: &meshfedv1.PeerMessage_ServiceUpsert{ServiceUpsert: &meshfedv1.ImportedService{
			Meta: &meshfedv1.Meta{Namespace: "default", Name: "Bad_Name"}, Service: &meshfedv1.Service{}}}},
		"bundle of another trust domain": {Message: &meshfedv1.PeerMessage_Bundle{Bundle: &meshfedv1.TrustBundle{TrustDomain: "east.mesh", RootsPem: []string{rootPEM(t, true)}}}},
		"bundle with a leaf":             {Message: &meshfedv1.PeerMessage_Bundle{Bundle: &meshfedv1.TrustBundle{TrustDomain: "west.mesh", RootsPem: []string{rootPEM(t, false)}}}},
		"empty bundle":                   {Message: &meshfedv1.PeerMessage_Bundle{Bundle: &meshfedv1.TrustBundle{TrustDomain: "west.mesh"}}},
		"second open":                    {Message: &meshfedv1.PeerMessage_Open{Open: &meshfedv1.PeerOpen{}}},
		"empty message":                  {},
	} {
		t.Run(name, func(t *testing.T) {
			rec := &recorder{imports: map[string]*meshfedv1.ImportedService{}}
			in, out := make(chan *meshfedv1.PeerMessage, 4), make(chan *meshfedv1.PeerMessage, 64)
			s := &Session{Peer: "west", PeerTD: west, Local: rec, Stream: pipe{in: in, out: out}, Heartbeat: time.Second}
			in <- m
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := s.Run(ctx)
			if !errors.Is(err, ErrBadPeerMessage) {
				t.Fatalf("Run = %v, want a refusal", err)
			}
			rec.mu.Lock()
			defer rec.mu.Unlock()
			if len(rec.imports) != 0 || rec.bundles != 0 {
				t.Fatalf("a refused message was stored: %d imports, %d bundles", len(rec.imports), rec.bundles)
			}
		})
	}

	t.Run("good messages are stored, then a silent peer times out", func(t *testing.T) {
		rec := &recorder{imports: map[string]*meshfedv1.ImportedService{}}
		in, out := make(chan *meshfedv1.PeerMessage, 4), make(chan *meshfedv1.PeerMessage, 64)
		defer close(in) // releases the receiving goroutine, as ending a stream does
		s := &Session{Peer: "west", PeerTD: west, Local: rec, Stream: pipe{in: in, out: out}, Heartbeat: 50 * time.Millisecond}
		in <- &meshfedv1.PeerMessage{Message: &meshfedv1.PeerMessage_ServiceUpsert{ServiceUpsert: svc("spiffe://west.mesh/ns/default/sa/payments")}}
		in <- &meshfedv1.PeerMessage{Message: &meshfedv1.PeerMessage_SyncComplete{SyncComplete: &meshfedv1.PeerSyncComplete{}}}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := s.Run(ctx)
		if err == nil || !strings.Contains(err.Error(), "silent") {
			t.Fatalf("Run = %v, want the silent-peer error", err)
		}
		rec.mu.Lock()
		defer rec.mu.Unlock()
		if len(rec.imports) != 1 || rec.synced != 1 {
			t.Fatalf("stored %d imports, %d syncs", len(rec.imports), rec.synced)
		}
	})
}

func TestSessionBatchesQueuedChanges(t *testing.T) {
	west := spiffeid.RequireTrustDomainFromString("west.mesh")
	svc := func(name string) *meshfedv1.PeerMessage {
		return &meshfedv1.PeerMessage{Message: &meshfedv1.PeerMessage_ServiceUpsert{ServiceUpsert: &meshfedv1.ImportedService{
			Meta:      &meshfedv1.Meta{Namespace: "default", Name: name},
			Service:   &meshfedv1.Service{Meta: &meshfedv1.Meta{Namespace: "default", Name: name}},
			Endpoints: []*meshfedv1.Endpoint{{Address: "10.0.0.1", Port: 8443, SpiffeId: "spiffe://west.mesh/ns/default/sa/" + name}}}}}
	}
	del := func(name string) *meshfedv1.PeerMessage {
		return &meshfedv1.PeerMessage{Message: &meshfedv1.PeerMessage_ServiceDelete{ServiceDelete: &meshfedv1.PeerServiceDelete{Namespace: "default", Name: name}}}
	}
	const n = 2*MaxImportBatch + 10
	run := func(t *testing.T, msgs []*meshfedv1.PeerMessage, heartbeat time.Duration) (*recorder, error) {
		rec := &recorder{imports: map[string]*meshfedv1.ImportedService{}}
		in, out := make(chan *meshfedv1.PeerMessage, len(msgs)), make(chan *meshfedv1.PeerMessage, 64)
		for _, m := range msgs {
			in <- m // all queued before the session starts
		}
		defer close(in)
		s := &Session{Peer: "west", PeerTD: west, Local: rec, Stream: pipe{in: in, out: out}, Heartbeat: heartbeat}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return rec, s.Run(ctx)
	}

	t.Run("a full sync is applied in batches, in order", func(t *testing.T) {
		var msgs []*meshfedv1.PeerMessage
		for i := range n {
			msgs = append(msgs, svc(fmt.Sprintf("svc-%d", i)))
		}
		msgs = append(msgs, del("svc-0"), svc("svc-1"), del("svc-1"))
		msgs = append(msgs, &meshfedv1.PeerMessage{Message: &meshfedv1.PeerMessage_SyncComplete{SyncComplete: &meshfedv1.PeerSyncComplete{}}})
		rec, err := run(t, msgs, 50*time.Millisecond)
		if err == nil || !strings.Contains(err.Error(), "silent") {
			t.Fatalf("Run = %v, want the silent-peer error", err)
		}
		rec.mu.Lock()
		defer rec.mu.Unlock()
		if len(rec.imports) != n-2 || rec.synced != 1 {
			t.Fatalf("stored %d imports (want %d), %d syncs", len(rec.imports), n-2, rec.synced)
		}
		if _, ok := rec.imports["default/svc-1"]; ok {
			t.Fatal("svc-1 was deleted after its upsert but is stored")
		}
		// Every change was queued before the session started, so calls
		// carry many changes each (how many depends on how far the reading
		// goroutine is ahead).
		if rec.batches > n/8 {
			t.Fatalf("%d changes took %d ApplyImports calls, want at most %d", n+3, rec.batches, n/8)
		}
	})

	t.Run("changes before a refused one are applied, nothing after", func(t *testing.T) {
		bad := svc("evil")
		bad.GetServiceUpsert().Endpoints[0].SpiffeId = "spiffe://east.mesh/ns/default/sa/evil"
		rec, err := run(t, []*meshfedv1.PeerMessage{svc("a"), svc("b"), bad, svc("c")}, time.Second)
		if !errors.Is(err, ErrBadPeerMessage) {
			t.Fatalf("Run = %v, want a refusal", err)
		}
		rec.mu.Lock()
		defer rec.mu.Unlock()
		if len(rec.imports) != 2 || rec.imports["default/a"] == nil || rec.imports["default/b"] == nil {
			t.Fatalf("stored %v, want a and b only", keys(rec.imports))
		}
	})
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
