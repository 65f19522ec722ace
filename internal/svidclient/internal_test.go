package svidclient

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

func TestRenewalTime(t *testing.T) {
	base := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name                string
		notBefore, notAfter time.Time
		received            time.Time
		r                   float64
		want                time.Time
	}{
		{"half life from receipt, backdating ignored", base.Add(-time.Minute), base.Add(time.Hour), base, 0, base.Add(30 * time.Minute)},
		{"jitter at most a tenth earlier", base.Add(-time.Minute), base.Add(time.Hour), base, 0.999999, base.Add(24 * time.Minute)},
		{"short lifetime", base.Add(-time.Minute), base.Add(10 * time.Second), base, 0, base.Add(5 * time.Second)},
		{"clock behind the issuer", base.Add(time.Minute), base.Add(time.Hour), base, 0, base.Add(time.Minute + 29*time.Minute + 30*time.Second)},
		{"received after expiry", base.Add(-time.Hour), base.Add(-time.Minute), base, 0, base.Add(-time.Hour).Add(29*time.Minute + 30*time.Second)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			leaf := &x509.Certificate{NotBefore: tt.notBefore, NotAfter: tt.notAfter}
			got := renewalTime(leaf, tt.received, tt.r)
			if d := got.Sub(tt.want); d < -time.Millisecond || d > time.Millisecond {
				t.Errorf("renewalTime = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	b := newBackoff(100*time.Millisecond, time.Second)
	windows := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, w := range windows {
		w *= time.Millisecond
		for range 20 {
			// Every draw advances the window, so test one draw per step on
			// a copy.
			c := *b
			if d := c.next(); d < w/2 || d > w {
				t.Fatalf("step %d: delay %s outside [%s, %s]", i, d, w/2, w)
			}
		}
		b.next()
	}
	b.reset()
	if d := b.next(); d > 100*time.Millisecond {
		t.Errorf("after reset: %s", d)
	}
	for range 100 {
		if d := jitter(time.Second); d < 0 || d >= time.Second {
			t.Fatalf("jitter %s", d)
		}
	}
	if jitter(0) != 0 {
		t.Error("jitter(0) != 0")
	}
}

func TestNotifyCoalesces(t *testing.T) {
	c := &Client{subs: map[chan Event]struct{}{}}
	a, stopA := c.Subscribe()
	b, stopB := c.Subscribe()
	c.notify(EventSVID)
	c.notify(EventBundle)
	if ev := <-a; ev != EventSVID|EventBundle {
		t.Errorf("a got %v, want svid|bundle", ev)
	}
	if ev := <-b; ev != EventSVID|EventBundle {
		t.Errorf("b got %v, want svid|bundle", ev)
	}
	// One subscriber's pending value does not leak into another's.
	c.notify(EventBundle)
	<-a
	c.notify(EventSVID)
	if ev := <-a; ev != EventSVID {
		t.Errorf("a got %v, want svid", ev)
	}
	if ev := <-b; ev != EventSVID|EventBundle {
		t.Errorf("b got %v", ev)
	}
	stopA()
	stopB()
	c.notify(EventSVID) // no subscriber left: does not block
	select {
	case ev := <-a:
		t.Errorf("notified after unsubscribing: %v", ev)
	default:
	}
	if s := (EventSVID | EventBundle).String(); s != "svid|bundle" {
		t.Errorf("String = %q", s)
	}
}

func TestConfigValidation(t *testing.T) {
	roots := []*x509.Certificate{{}}
	for _, tt := range []struct {
		cfg  Config
		want string
	}{
		{Config{Token: "t", CARoots: roots}, "no server address"},
		{Config{Addrs: []string{"10.0.0.1"}, Token: "t", CARoots: roots}, `server address "10.0.0.1": want host:port`},
		{Config{Addrs: []string{"a:1"}, CARoots: roots}, "no workload-join token"},
		{Config{Addrs: []string{"a:1"}, Token: "t"}, "no CA bundle"},
		{Config{Addrs: []string{"a:1"}, Token: "t", CAFile: "/nonexistent/ca.pem"}, "reading CA file"},
		{Config{Addrs: []string{"a:1"}, Token: "t", CARoots: roots, KeyAlgorithm: 42}, "unsupported key algorithm"},
	} {
		_, err := New(tt.cfg)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("New(%+v) = %v, want %q", tt.cfg, err, tt.want)
		}
	}
	c, err := New(Config{Addrs: []string{"a:1"}, Token: "t", CARoots: roots})
	if err != nil {
		t.Fatal(err)
	}
	cfg := c.cfg
	if cfg.RenewJitter != DefaultRenewJitter || cfg.RequestTimeout != DefaultRequestTimeout || cfg.MinBackoff != DefaultMinBackoff ||
		cfg.MaxBackoff != DefaultMaxBackoff || cfg.StaleBundleGrace != DefaultStaleBundle || cfg.Logger == nil || cfg.Now == nil {
		t.Errorf("defaults not applied: %+v", cfg)
	}
}

func TestRetryable(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{status.Error(codes.Unavailable, "x"), true},
		{status.Error(codes.DeadlineExceeded, "x"), true},
		{status.Error(codes.Internal, "x"), true},
		{status.Error(codes.Unauthenticated, "x"), false},
		{status.Error(codes.PermissionDenied, "x"), false},
		{status.Error(codes.InvalidArgument, "x"), false},
		{status.Error(codes.FailedPrecondition, "x"), false},
		{status.Error(codes.Unimplemented, "x"), false},
		{&invalidResponseError{addr: "a", err: errors.New("bad")}, false},
		{fmt.Errorf("wrapped: %w", status.Error(codes.Unavailable, "x")), true},
	} {
		if got := retryable(tt.err); got != tt.want {
			t.Errorf("retryable(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
	err := &refusedError{op: "attestation", addr: "a:1", err: status.Error(codes.PermissionDenied, "no uses left")}
	if !errors.Is(err, ErrRefused) || status.Code(err) != codes.PermissionDenied {
		t.Errorf("refusedError does not unwrap to ErrRefused and its status: %v", err)
	}
}

func TestNewCSR(t *testing.T) {
	for _, alg := range []meshfedv1.KeyAlgorithm{
		meshfedv1.KeyAlgorithm_KEY_ALGORITHM_UNSPECIFIED,
		meshfedv1.KeyAlgorithm_KEY_ALGORITHM_ECDSA_P384,
		meshfedv1.KeyAlgorithm_KEY_ALGORITHM_RSA_2048,
	} {
		key, der, err := newCSR(alg, spiffeid.ID{})
		if err != nil {
			t.Fatal(err)
		}
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			t.Fatal(err)
		}
		if err := csr.CheckSignature(); err != nil {
			t.Errorf("%v: %v", alg, err)
		}
		if len(csr.URIs)+len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) != 0 || csr.Subject.String() != "" {
			t.Errorf("%v: the CSR names something: %v %v", alg, csr.URIs, csr.Subject)
		}
		if !publicKeyEqual(key, csr.PublicKey) {
			t.Errorf("%v: CSR not for the key", alg)
		}
		pemKey, err := marshalKeyPEM(key)
		if err != nil || !strings.HasPrefix(string(pemKey), "-----BEGIN PRIVATE KEY-----\n") {
			t.Errorf("%v: %v %.30s", alg, err, pemKey)
		}
	}
	id := spiffeid.RequireFromString("spiffe://test.mesh/ns/a/sa/b")
	_, der, err := newCSR(meshfedv1.KeyAlgorithm_KEY_ALGORITHM_ECDSA_P256, id)
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := x509.ParseCertificateRequest(der)
	if len(csr.URIs) != 1 || csr.URIs[0].String() != id.String() {
		t.Errorf("CSR URIs %v, want %s", csr.URIs, id)
	}
}

func TestParseTrustBundle(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("test.mesh")
	for _, tt := range []struct {
		tb   *meshfedv1.TrustBundle
		want string
	}{
		{&meshfedv1.TrustBundle{TrustDomain: "Not A Domain!"}, "trust_domain"},
		{&meshfedv1.TrustBundle{TrustDomain: "test.mesh"}, "no roots"},
		{&meshfedv1.TrustBundle{TrustDomain: "test.mesh", RootsPem: []string{"garbage"}}, "roots_pem[0]"},
	} {
		if _, err := parseTrustBundle(tt.tb, td); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("parseTrustBundle(%v) = %v, want %q", tt.tb, err, tt.want)
		}
	}
	if _, err := parseTrustBundle(&meshfedv1.TrustBundle{}, spiffeid.TrustDomain{}); err == nil {
		t.Error("a bundle without a trust domain was accepted")
	}
}
