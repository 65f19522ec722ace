package svidclient

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Client obtains, renews and serves one workload's SVID and the bundles it
// trusts. It is safe for concurrent use.
type Client struct {
	cfg Config
	log *slog.Logger

	subMu sync.Mutex
	subs  map[chan Event]struct{}

	// renewMu allows one attestation or renewal at a time, so that a manual
	// Renew and the scheduled one do not both spend a round trip (or a
	// token use).
	renewMu sync.Mutex

	mu sync.RWMutex
	// The SVID and what is known about it.
	svid        *x509svid.SVID
	authorityID string
	renewAt     time.Time
	// rotateAt is when to renew because the SVID's authority is not the
	// active one (or its chain left the bundle); zero when not needed.
	// rotateTries counts renewals that did not reach the active authority.
	rotateAt    time.Time
	rotateTries int
	// The bundles. td is the SVID's trust domain; own is its bundle.
	td        spiffeid.TrustDomain
	own       *x509bundle.Bundle
	federated map[spiffeid.TrustDomain]*x509bundle.Bundle
	bundleSeq uint64
	// activeAuthority is the authority the cluster signs with, as last
	// reported on the bundle stream.
	activeAuthority string
	// preferred is the index in cfg.Addrs of the server that answered last.
	preferred int
	// Lifecycle.
	started, closed bool
	cancel          context.CancelFunc

	wg   sync.WaitGroup
	done chan struct{}
	once sync.Once
}

var (
	_ x509svid.Source   = (*Client)(nil)
	_ x509bundle.Source = (*Client)(nil)
)

// New checks cfg and returns a Client holding no SVID yet; Start (or
// Attest) obtains one. It does not contact any server.
func New(cfg Config) (*Client, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Client{
		cfg:       cfg,
		log:       cfg.Logger,
		subs:      map[chan Event]struct{}{},
		federated: map[spiffeid.TrustDomain]*x509bundle.Bundle{},
		done:      make(chan struct{}),
	}, nil
}

// Start obtains the first SVID, blocking until it has one, ctx ends, Close
// is called, or a server refuses the token (an error wrapping ErrRefused).
// Then it keeps the SVID and the bundles current in the background until
// ctx ends or Close is called.
func (c *Client) Start(ctx context.Context) error {
	c.mu.Lock()
	switch {
	case c.closed:
		c.mu.Unlock()
		return ErrClosed
	case c.started:
		c.mu.Unlock()
		return errors.New("svidclient: already started")
	}
	c.started = true
	ctx, cancel := context.WithCancel(ctx)
	c.cancel = cancel
	c.mu.Unlock()

	if err := c.Attest(ctx); err != nil {
		cancel()
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	// Added under mu, which Close takes before it waits, so the two never
	// race.
	c.wg.Add(2)
	go c.maintain(ctx)
	go c.watch(ctx)
	return nil
}

// Run is Start, then waits until ctx ends or Close is called, and stops
// every goroutine before it returns. It returns nil when ctx ended after
// the first SVID was obtained.
func (c *Client) Run(ctx context.Context) error {
	if err := c.Start(ctx); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
	case <-c.done:
	}
	return c.Close()
}

// Close stops renewal and the bundle stream and waits for their goroutines
// to end. The last SVID and bundles stay readable. Close is idempotent.
func (c *Client) Close() error {
	c.once.Do(func() {
		c.mu.Lock()
		c.closed = true
		cancel := c.cancel
		c.mu.Unlock()
		if cancel != nil {
			cancel()
		}
		c.wg.Wait()
		close(c.done)
	})
	return nil
}

// GetX509SVID implements x509svid.Source: the current SVID, or ErrNoSVID.
// The returned value is never modified; a renewal installs a new one.
func (c *Client) GetX509SVID() (*x509svid.SVID, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.svid == nil {
		return nil, ErrNoSVID
	}
	return c.svid, nil
}

// GetX509BundleForTrustDomain implements x509bundle.Source: the roots of
// the client's own trust domain, or of a federated one. The returned bundle
// is never modified; updates install new ones.
func (c *Client) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.own != nil && td == c.td {
		return c.own, nil
	}
	if b, ok := c.federated[td]; ok {
		return b, nil
	}
	return nil, fmt.Errorf("svidclient: no bundle for trust domain %q", td)
}

// X509Bundles returns a set holding the own trust domain's bundle and every
// federated one.
func (c *Client) X509Bundles() *x509bundle.Set {
	c.mu.RLock()
	defer c.mu.RUnlock()
	set := x509bundle.NewSet()
	if c.own != nil {
		set.Add(c.own)
	}
	for _, b := range c.federated {
		set.Add(b)
	}
	return set
}

// Status describes the SVID held and the bundle state.
type Status struct {
	// ID is the SVID's SPIFFE ID; zero before the first SVID.
	ID spiffeid.ID
	// AuthorityID is the CA authority that issued the SVID.
	AuthorityID string
	// ExpiresAt is the leaf's NotAfter; RenewAt when the next renewal is
	// scheduled (earlier while a CA rotation asks for one).
	ExpiresAt time.Time
	RenewAt   time.Time
	// BundleSequence is the sequence of the last bundle applied from the
	// bundle stream (0 before the first).
	BundleSequence uint64
	// ActiveAuthorityID is the authority the cluster signs with, as last
	// reported on the bundle stream.
	ActiveAuthorityID string
}

// Status returns a snapshot of the client's state.
func (c *Client) Status() Status {
	c.mu.RLock()
	defer c.mu.RUnlock()
	st := Status{
		AuthorityID:       c.authorityID,
		BundleSequence:    c.bundleSeq,
		ActiveAuthorityID: c.activeAuthority,
	}
	if c.svid != nil {
		st.ID = c.svid.ID
		st.ExpiresAt = c.svid.Certificates[0].NotAfter
		st.RenewAt, _ = c.nextRenewalLocked()
	}
	return st
}

// nextRenewalLocked returns when the SVID should be renewed and why.
func (c *Client) nextRenewalLocked() (time.Time, string) {
	if !c.rotateAt.IsZero() && c.rotateAt.Before(c.renewAt) {
		return c.rotateAt, "the cluster signs with another authority"
	}
	return c.renewAt, "half life"
}

// renewalTime is when to renew a leaf received at received: at half of the
// lifetime left at receipt, made earlier by up to a tenth of it (r in
// [0, 1)) so that workloads started together spread their renewals.
// Counting from receipt rather than NotBefore ignores the CA's backdating,
// which would otherwise make short-lived SVIDs renew at once.
func renewalTime(leaf *x509.Certificate, received time.Time, r float64) time.Time {
	start := leaf.NotBefore
	if received.After(start) && received.Before(leaf.NotAfter) {
		start = received
	}
	life := leaf.NotAfter.Sub(start)
	return start.Add(time.Duration(float64(life) * (0.5 - 0.1*r)))
}

// setPreferred remembers the server that answered.
func (c *Client) setPreferred(i int) {
	c.mu.Lock()
	c.preferred = i
	c.mu.Unlock()
}

func (c *Client) preferredIndex() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.preferred
}

// serverRoots are the roots that verify servers: the trust domain's bundle
// once known (it follows CA rotation), else the configured CA bundle.
func (c *Client) serverRoots() []*x509.Certificate {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.own != nil && !c.own.Empty() {
		return c.own.X509Authorities()
	}
	return c.cfg.CARoots
}

// randFloat is the source of renewal jitter.
func randFloat() float64 { return rand.Float64() }
