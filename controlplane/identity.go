package controlplane

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/go-memdb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/ca"
	"github.com/meshfed/meshfed/controlplane/state"
	mfid "github.com/meshfed/meshfed/internal/spiffeid"
	"github.com/meshfed/meshfed/internal/tlsutil"
)

// Files in the data dir that hold this server's identity.
const (
	fileServerKey  = "server.key"
	fileServerCert = "server.crt"
	fileCABundle   = "ca.pem"
)

// serverIdentity keeps this server's certificate and trusted roots current.
//
// Trust is the union of the replicated bundle and the roots this server's
// current and previous certificates chain to. The extra roots matter after a
// snapshot restore replaces the CA: servers keep presenting certificates of
// the old CA until they re-sign, and a follower must still accept the leader
// that brings it the restored state.
type serverIdentity struct {
	s *Server

	mu        sync.Mutex
	key       crypto.Signer
	chain     []*x509.Certificate
	ownRoots  []*x509.Certificate
	prevRoots []*x509.Certificate
	// foreignSince is when the replicated bundle stopped containing a root
	// our certificate chains to.
	foreignSince time.Time
	lastBundle   []byte

	// signerMu orders loads of the CA signer; signerIndex is the index of
	// the authorities table it was loaded from.
	signerMu    sync.Mutex
	signerIndex uint64
	// signerStore is the store it was loaded from: a restore replaces it.
	signerStore *state.Store
}

// loadSigner brings the CA signer up to the replicated authorities, if it
// is behind, and returns them. Issuance calls it before signing: the
// maintain loop follows the state a moment later, and an SVID signed in that
// moment would come from an authority a rotation just replaced.
func (id *serverIdentity) loadSigner() ([]*meshfedv1.StoredAuthority, error) {
	id.signerMu.Lock()
	defer id.signerMu.Unlock()
	store := id.s.store()
	idx := store.KindIndex(nil, meshfedv1.ResourceKind_RESOURCE_KIND_AUTHORITY)
	_, items, _, err := store.List(nil, listAll(meshfedv1.ResourceKind_RESOURCE_KIND_AUTHORITY))
	if err != nil {
		return nil, err
	}
	auths := make([]*meshfedv1.StoredAuthority, 0, len(items))
	for _, it := range items {
		auths = append(auths, it.(*meshfedv1.StoredAuthority))
	}
	if (idx != id.signerIndex || store != id.signerStore) && len(auths) > 0 {
		if err := id.s.ca.SetAuthorities(auths); err != nil {
			return nil, err
		}
		id.signerIndex, id.signerStore = idx, store
	}
	return auths, nil
}

// signerCurrent is the cheap check issuance makes: has the authorities
// table changed since the signer was loaded?
func (id *serverIdentity) signerCurrent() bool {
	store := id.s.store()
	idx := store.KindIndex(nil, meshfedv1.ResourceKind_RESOURCE_KIND_AUTHORITY)
	id.signerMu.Lock()
	defer id.signerMu.Unlock()
	return idx == id.signerIndex && store == id.signerStore
}

func newServerIdentity(s *Server) *serverIdentity { return &serverIdentity{s: s} }

// sans are the names the server's certificate carries besides its SPIFFE ID,
// so that standard TLS clients (grpcurl, curl) can verify it by address.
func (id *serverIdentity) sans() ([]string, []net.IP) {
	dns := []string{"localhost"}
	var ips []net.IP
	seen := map[string]bool{}
	for _, a := range []string{id.s.cfg.APIAddr, id.s.cfg.APIAdvertiseAddr, id.s.cfg.HTTPAddr, id.s.cfg.RaftAddr, id.s.cfg.RaftAdvertiseAddr} {
		host, _, err := net.SplitHostPort(a)
		if err != nil || host == "" || seen[host] {
			continue
		}
		seen[host] = true
		if ip := net.ParseIP(host); ip != nil {
			if !ip.IsUnspecified() {
				ips = append(ips, ip)
			}
		} else if host != "localhost" {
			dns = append(dns, host)
		}
	}
	return dns, ips
}

// load reads the key, certificate and bundle written by an earlier run.
func (id *serverIdentity) load() error {
	keyPEM, err := os.ReadFile(id.s.path(fileServerKey))
	if err != nil {
		return err
	}
	key, err := ca.ParsePrivateKey(keyPEM)
	if err != nil {
		return fmt.Errorf("%s: %w", fileServerKey, err)
	}
	chain, err := tlsutil.LoadCertificatesFile(id.s.path(fileServerCert))
	if err != nil {
		return err
	}
	roots, err := tlsutil.LoadCertificatesFile(id.s.path(fileCABundle))
	if err != nil {
		return err
	}
	return id.install(chain, key, roots, false)
}

// install makes chain the server's certificate and roots the trusted roots
// it verifies against; persist writes both to the data dir.
func (id *serverIdentity) install(chain []*x509.Certificate, key crypto.Signer, roots []*x509.Certificate, persist bool) error {
	own := chainRoots(chain, roots)
	if len(own) == 0 {
		return errors.New("server certificate does not chain to any trusted root")
	}
	if err := id.s.tls.SetCertificate(chain, key); err != nil {
		return err
	}
	id.mu.Lock()
	if id.chain != nil && !slices.EqualFunc(id.ownRoots, own, (*x509.Certificate).Equal) {
		id.prevRoots = id.ownRoots
	}
	id.key, id.chain, id.ownRoots = key, chain, own
	id.foreignSince = time.Time{}
	id.mu.Unlock()
	if persist {
		keyPEM, err := ca.MarshalPrivateKey(key)
		if err != nil {
			return err
		}
		if err := writeFileAtomic(id.s.path(fileServerKey), keyPEM, 0o600); err != nil {
			return err
		}
		if err := writeFileAtomic(id.s.path(fileServerCert), tlsutil.EncodeCertificatesPEM(chain), 0o644); err != nil {
			return err
		}
	}
	return id.setTrust(roots)
}

// setTrust installs bundle plus this server's own roots as the trusted set,
// and rewrites ca.pem when it changed.
func (id *serverIdentity) setTrust(bundle []*x509.Certificate) error {
	id.mu.Lock()
	// The server's own roots are trusted beside the bundle (for a restore
	// that replaced the CA), unless a rotation retired them.
	all := unionCerts(bundle, withoutCerts(unionCerts(id.ownRoots, id.prevRoots), id.s.ca.Retired()))
	id.mu.Unlock()
	id.s.tls.SetRoots(all)
	data := tlsutil.EncodeCertificatesPEM(all)
	id.mu.Lock()
	changed := !bytes.Equal(data, id.lastBundle)
	id.lastBundle = data
	id.mu.Unlock()
	if changed {
		return writeFileAtomic(id.s.path(fileCABundle), data, 0o644)
	}
	return nil
}

// signLocally issues this server a fresh certificate from the replicated CA
// (every server holds the CA keys) with a new key.
func (id *serverIdentity) signLocally() error {
	sid, err := mfid.Server(id.s.td, id.s.cfg.NodeID)
	if err != nil {
		return err
	}
	dns, ips := id.sans()
	csr, key, err := ca.NewServerCSR(sid, dns, ips)
	if err != nil {
		return err
	}
	chain, err := id.s.ca.Sign(ca.SignParams{CSR: csr, ID: sid, DNSNames: dns, IPs: ips, TTL: ca.DefaultServerCertTTL})
	if err != nil {
		return err
	}
	if err := id.install(chain, key, id.s.ca.Bundle(), true); err != nil {
		return err
	}
	id.s.log.Info("issued server certificate", "not_after", chain[0].NotAfter, "authority", id.s.ca.ActiveID())
	return nil
}

// maintain follows the replicated authorities: it keeps the CA signer and
// the trusted roots current and renews this server's certificate at half
// life, or when its root has left the bundle for a while (after a restore).
func (id *serverIdentity) maintain(ctx context.Context) {
	for {
		ws := memdb.NewWatchSet()
		store := id.s.store()
		ws.Add(store.AbandonCh())
		// Register interest first, then load: a change in between wakes
		// the next round.
		store.KindIndex(ws, meshfedv1.ResourceKind_RESOURCE_KIND_AUTHORITY)
		auths, err := id.loadSigner()
		if err != nil {
			id.s.log.Error("loading authorities", "error", err)
		} else if len(auths) > 0 {
			id.sync(auths)
		}
		wctx, cancel := context.WithTimeout(ctx, id.nextCheck())
		_ = ws.WatchCtx(wctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
	}
}

func (id *serverIdentity) sync(auths []*meshfedv1.StoredAuthority) {
	bundle := id.s.ca.Bundle()
	if err := id.setTrust(bundle); err != nil {
		id.s.log.Error("updating trust bundle", "error", err)
	}
	id.mu.Lock()
	chain := id.chain
	inBundle := len(chainRoots(chain, bundle)) > 0
	if inBundle {
		id.foreignSince = time.Time{}
	} else if id.foreignSince.IsZero() {
		id.foreignSince = time.Now()
	}
	foreignFor := time.Since(id.foreignSince)
	foreign := !inBundle
	id.mu.Unlock()

	// Renew at half life, but only when a new certificate would live longer:
	// a certificate capped by an intermediate that is about to be renewed
	// waits for the new intermediate instead of being re-issued in a loop.
	renew := false
	if len(chain) > 0 {
		renew = !time.Now().Before(ca.RenewalTime(chain[0])) && activeIntermediateExpiry(auths).After(chain[0].NotAfter.Add(time.Second))
	}
	if foreign && foreignFor > foreignRootGrace {
		renew = true
	}
	// When the signing chain changes (a rotation activates a new authority,
	// the intermediate is renewed, retire drops the cross-signed
	// intermediate), move to a certificate with the new chain at once, so
	// that the old root can be retired and, once it is, nothing presents a
	// chain to it any more. Every root of either chain stays trusted until
	// then, so no peer refuses either certificate meanwhile.
	if len(chain) > 0 && !foreign && !slices.EqualFunc(chain[1:], id.s.ca.ActiveChain(), (*x509.Certificate).Equal) {
		renew = true
	}
	if renew {
		if err := id.signLocally(); err != nil {
			id.s.log.Error("renewing server certificate", "error", err)
		}
	}
}

// foreignRootGrace is how long a server keeps a certificate whose root left
// the bundle, so that every server has applied the change before any stops
// presenting the old chain.
const foreignRootGrace = 20 * time.Second

// chainRoots returns the roots among roots that chain verifies against.
func chainRoots(chain []*x509.Certificate, roots []*x509.Certificate) []*x509.Certificate {
	if len(chain) == 0 {
		return nil
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	// Which root a chain belongs to does not depend on the time: check it in
	// the middle of the leaf's life, so an expired chain is still placed.
	leaf := chain[0]
	mid := leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)
	var out []*x509.Certificate
	for _, r := range roots {
		pool := x509.NewCertPool()
		pool.AddCert(r)
		if _, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: mid, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
			out = append(out, r)
		}
	}
	return out
}

// withoutCerts returns set minus the certificates in drop.
func withoutCerts(set, drop []*x509.Certificate) []*x509.Certificate {
	var out []*x509.Certificate
	for _, c := range set {
		if !slices.ContainsFunc(drop, c.Equal) {
			out = append(out, c)
		}
	}
	return out
}

func unionCerts(sets ...[]*x509.Certificate) []*x509.Certificate {
	var out []*x509.Certificate
	seen := map[string]bool{}
	for _, set := range sets {
		for _, c := range set {
			if k := string(c.Raw); !seen[k] {
				seen[k] = true
				out = append(out, c)
			}
		}
	}
	return out
}

// writeFileAtomic writes data to path through a temporary file and rename,
// so a crash never leaves a half-written key or bundle.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// nextCheck is how long maintain may sleep: until the certificate's half
// life, at most 30 seconds, at least one.
func (id *serverIdentity) nextCheck() time.Duration {
	id.mu.Lock()
	chain := id.chain
	id.mu.Unlock()
	wait := 30 * time.Second
	if len(chain) > 0 {
		wait = min(wait, time.Until(ca.RenewalTime(chain[0])))
	}
	return max(wait, time.Second)
}

// activeIntermediateExpiry returns when the active authority's intermediate
// expires (zero if there is none).
func activeIntermediateExpiry(auths []*meshfedv1.StoredAuthority) time.Time {
	for _, a := range auths {
		if a.GetAuthority().GetState() == meshfedv1.AuthorityState_AUTHORITY_STATE_ACTIVE {
			return a.GetAuthority().GetIntermediateNotAfter().AsTime()
		}
	}
	return time.Time{}
}
