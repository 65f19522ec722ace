package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"debug/buildinfo"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.step.sm/crypto/jose"
	"golang.org/x/sync/errgroup"

	"github.com/meshfed/meshfed/bench/internal/harness"
)

const (
	stepProvisioner = "bench"
	stepTrustDomain = "stepca.bench"
	// svidLifetime is meshfed's default SVID lifetime; step-ca is configured
	// to issue the same.
	svidLifetime = time.Hour
)

// stepCA is one step-ca process with a JWK provisioner whose private key
// the load generator holds.
type stepCA struct {
	p       *harness.Proc
	addr    string
	dir     string
	version string
	roots   *x509.CertPool
	rootPEM []byte
	jwk     *jose.JSONWebKey // private
	proto   string           // HTTP version negotiated, seen in setup

	keys    []workloadKey
	workers []*stepWorker
	issued  atomic.Int64
	// freshCSR: every request carries a new key's CSR, made in Prepare.
	freshCSR bool
	lifetime time.Duration // NotAfter-NotBefore of the first certificate
}

// stepCAConfig is the part of step-ca's ca.json this bench sets. "db" is
// written as null: step-ca then keeps no database (authority/db SimpleDB),
// so it stores no certificate and keeps the used one-time tokens in memory.
type stepCAConfig struct {
	Root      string          `json:"root"`
	Crt       string          `json:"crt"`
	Key       string          `json:"key"`
	Address   string          `json:"address"`
	DNSNames  []string        `json:"dnsNames"`
	Logger    map[string]any  `json:"logger"`
	DB        json.RawMessage `json:"db"`
	Authority map[string]any  `json:"authority"`
	TLS       map[string]any  `json:"tls"`
}

// startStepCA writes a root, an intermediate, a JWK provisioner and ca.json
// into dir and starts step-ca on a free loopback port.
func startStepCA(ctx context.Context, ps *harness.Procs, bin, dir string) (*stepCA, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	pair, err := newCAPair("svidbench step-ca")
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{
		"root_ca.crt":         pair.rootPEM,
		"intermediate_ca.crt": pair.interPEM,
		"intermediate_ca_key": pair.interKeyPEM,
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return nil, err
		}
	}
	jwk, err := jose.GenerateJWK("EC", "P-256", "ES256", "sig", "", 0)
	if err != nil {
		return nil, fmt.Errorf("provisioner key: %w", err)
	}
	pub := jwk.Public()
	ports, err := harness.FreePorts(1)
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	cfg := stepCAConfig{
		Root:     filepath.Join(dir, "root_ca.crt"),
		Crt:      filepath.Join(dir, "intermediate_ca.crt"),
		Key:      filepath.Join(dir, "intermediate_ca_key"),
		Address:  addr,
		DNSNames: []string{"127.0.0.1"},
		Logger:   map[string]any{"format": "text"},
		DB:       json.RawMessage("null"),
		Authority: map[string]any{
			"provisioners": []any{map[string]any{
				"type": "JWK",
				"name": stepProvisioner,
				"key":  &pub,
				"claims": map[string]any{
					"minTLSCertDuration":     "5m",
					"maxTLSCertDuration":     "24h",
					"defaultTLSCertDuration": svidLifetime.String(),
				},
			}},
		},
		// Both systems serve TLS 1.3 only.
		TLS: map[string]any{"minVersion": 1.3, "maxVersion": 1.3},
	}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(dir, "ca.json")
	if err := os.WriteFile(cfgPath, data, 0o600); err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pair.rootPEM)
	s := &stepCA{addr: addr, dir: dir, roots: roots, rootPEM: pair.rootPEM, jwk: jwk, version: binaryVersion(bin)}
	// STEPPATH points into the bench's own directory so that step-ca reads
	// and writes nothing under the user's home.
	env := []string{"STEPPATH=" + filepath.Join(dir, "steppath")}
	if s.p, err = ps.Start("step-ca", filepath.Join(dir, "step-ca.log"), env, bin, cfgPath); err != nil {
		return nil, err
	}
	hc := s.httpClient()
	defer hc.CloseIdleConnections()
	err = harness.WaitFor(ctx, "step-ca /health", 60*time.Second, []*harness.Proc{s.p}, func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+"/health", nil)
		if err != nil {
			return err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/health: %s: %s", resp.Status, body)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// binaryVersion reads the main module version a Go binary was built from
// (step-ca's own version string says "dev" when built by go install).
func binaryVersion(bin string) string {
	bi, err := buildinfo.ReadFile(bin)
	if err != nil {
		return "(version unknown)"
	}
	return bi.Main.Version
}

// httpClient has its own transport, so that each workload holds its own
// connection, as each meshfed workload holds its own gRPC connection.
func (s *stepCA) httpClient() *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:     &tls.Config{RootCAs: s.roots, MinVersion: tls.VersionTLS13},
			ForceAttemptHTTP2:   true,
			MaxIdleConnsPerHost: 1,
			MaxConnsPerHost:     1,
		},
	}
}

func (*stepCA) Name() string { return "step-ca" }

func (s *stepCA) Procs() []*harness.Proc { return []*harness.Proc{s.p} }

func (s *stepCA) Issued() int64 { return s.issued.Load() }

// setup makes n workloads, each with its own key, CSR, connection and token
// signer, connects them, and checks the first certificate every workload
// gets.
func (s *stepCA) setup(ctx context.Context, keys []workloadKey) error {
	s.keys = keys
	aud := "https://" + s.addr + "/1.0/sign"
	nonce := make([]byte, 8)
	if _, err := rand.Read(nonce); err != nil {
		return err
	}
	s.workers = make([]*stepWorker, len(keys))
	for i, k := range keys {
		id := workloadID(stepTrustDomain, i)
		der, err := csrDER(k.key, id)
		if err != nil {
			return err
		}
		signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: s.jwk.Key},
			new(jose.SignerOptions).WithType("JWT").WithHeader("kid", s.jwk.KeyID))
		if err != nil {
			return fmt.Errorf("token signer: %w", err)
		}
		s.workers[i] = &stepWorker{
			ca: s, id: id, aud: aud, signer: signer, hc: s.httpClient(),
			url:    aud,
			csrPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})),
			jti:    fmt.Sprintf("%x-%d-", nonce, i),
		}
	}
	var protoOnce sync.Once
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for i, w := range s.workers {
		g.Go(func() error {
			crt, proto, err := w.sign(gctx)
			if err != nil {
				return fmt.Errorf("workload %d: %w", i, err)
			}
			_, leaf, err := checkSVID([]byte(crt.chain()), s.rootPEM, w.id, keys[i].key)
			if err != nil {
				return fmt.Errorf("workload %d: %w", i, err)
			}
			if i == 0 {
				s.lifetime = leaf.NotAfter.Sub(leaf.NotBefore)
			}
			protoOnce.Do(func() { s.proto = proto })
			return nil
		})
	}
	return g.Wait()
}

func (s *stepCA) Workers(n int) []worker {
	out := make([]worker, n)
	for i := range out {
		out[i] = s.workers[i]
	}
	return out
}

func (s *stepCA) close() {
	for _, w := range s.workers {
		w.hc.CloseIdleConnections()
	}
}

// stepWorker is one workload's client of step-ca.
type stepWorker struct {
	ca     *stepCA
	id     string
	aud    string
	url    string
	csrPEM string
	signer jose.Signer
	hc     *http.Client
	jti    string
	seq    int
	bodies [][]byte // prepared requests, oldest first
}

type jwtSANs struct {
	SANs []string `json:"sans"`
}

// Prepare builds a request: a one-time token (unique jti, valid for five
// minutes) and the JSON body carrying it and the workload's CSR.
func (w *stepWorker) Prepare() error {
	if !w.ca.freshCSR {
		return w.prepare(w.csrPEM)
	}
	der, err := freshCSR(w.id)
	if err != nil {
		return err
	}
	return w.prepare(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})))
}

func (w *stepWorker) prepare(csrPEM string) error {
	now := time.Now()
	w.seq++
	claims := jose.Claims{
		ID:        w.jti + fmt.Sprint(w.seq),
		Issuer:    stepProvisioner,
		Subject:   w.id,
		Audience:  jose.Audience{w.aud},
		NotBefore: jose.NewNumericDate(now.Add(-time.Second)),
		IssuedAt:  jose.NewNumericDate(now),
		Expiry:    jose.NewNumericDate(now.Add(5 * time.Minute)),
	}
	tok, err := jose.Signed(w.signer).Claims(claims).Claims(jwtSANs{SANs: []string{w.id}}).CompactSerialize()
	if err != nil {
		return fmt.Errorf("token: %w", err)
	}
	body, err := json.Marshal(struct {
		CSR string `json:"csr"`
		OTT string `json:"ott"`
	}{csrPEM, tok})
	if err != nil {
		return err
	}
	w.bodies = append(w.bodies, body)
	return nil
}

type signResponse struct {
	Crt       string   `json:"crt"`
	CertChain []string `json:"certChain"`
}

func (r signResponse) chain() string {
	if len(r.CertChain) > 0 {
		return strings.Join(r.CertChain, "")
	}
	return r.Crt
}

func (w *stepWorker) Issue(ctx context.Context) error {
	resp, _, err := w.post(ctx)
	if err != nil {
		return err
	}
	if !hasCertificatePEM(resp.Crt) {
		return errors.New("step-ca answered without a certificate")
	}
	return nil
}

// sign sends one request with the workload's own CSR and returns the
// response and the HTTP version it came over.
func (w *stepWorker) sign(ctx context.Context) (signResponse, string, error) {
	if err := w.prepare(w.csrPEM); err != nil {
		return signResponse{}, "", err
	}
	return w.post(ctx)
}

func (w *stepWorker) post(ctx context.Context) (signResponse, string, error) {
	if len(w.bodies) == 0 {
		return signResponse{}, "", errors.New("no prepared request")
	}
	body := w.bodies[0]
	w.bodies = w.bodies[1:]
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(body))
	if err != nil {
		return signResponse{}, "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := w.hc.Do(req)
	if err != nil {
		return signResponse{}, "", err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return signResponse{}, "", err
	}
	if resp.StatusCode != http.StatusCreated {
		return signResponse{}, "", fmt.Errorf("POST /1.0/sign: %s: %s", resp.Status, strings.TrimSpace(string(data)))
	}
	var out signResponse
	if err := json.Unmarshal(data, &out); err != nil {
		return signResponse{}, "", fmt.Errorf("decoding /1.0/sign response: %w", err)
	}
	w.ca.issued.Add(1)
	return out, resp.Proto, nil
}

// Warm opens the connection if the server closed it (step-ca closes
// connections idle for 15 s) with a request that issues nothing.
func (w *stepWorker) Warm(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+w.ca.addr+"/health", nil)
	if err != nil {
		return err
	}
	resp, err := w.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("/health: %s", resp.Status)
	}
	return err
}
