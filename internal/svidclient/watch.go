package svidclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// errReconnect ends a bundle stream whose connection authenticated with an
// SVID that has expired: the stream is opened again with the current one.
var errReconnect = errors.New("the stream's client certificate expired")

// watch keeps a WatchBundle stream open to one server at a time, moving to
// the next server when a stream fails, with backoff between attempts. The
// backoff starts over after a stream that delivered a bundle and stayed up
// longer than MaxBackoff, so a server that accepts streams and then drops
// them is not hammered. It returns when ctx ends.
func (c *Client) watch(ctx context.Context) {
	defer c.wg.Done()
	bo := newBackoff(c.cfg.MinBackoff, c.cfg.MaxBackoff)
	idx := c.preferredIndex()
	for {
		addr := c.cfg.Addrs[idx]
		opened := time.Now()
		delivered, err := c.watchSession(ctx, addr)
		if ctx.Err() != nil {
			return
		}
		if delivered && time.Since(opened) > c.cfg.MaxBackoff {
			bo.reset()
		}
		if errors.Is(err, errReconnect) {
			c.log.Debug("reopening the bundle stream with the current SVID", "addr", addr)
			continue
		}
		idx = (idx + 1) % len(c.cfg.Addrs)
		d := bo.next()
		c.log.Warn("bundle stream ended, reconnecting", "addr", addr, "error", err, "next", c.cfg.Addrs[idx], "in", d)
		if sleep(ctx, d) != nil {
			return
		}
	}
}

// watchSession runs one WatchBundle stream: it opens it with an empty
// request, applies every bundle it receives and acknowledges it with the
// sequence and the authority of the SVID held, and sends a new
// acknowledgement after every renewal so that the server learns the new
// authority. delivered reports whether at least one bundle was applied.
func (c *Client) watchSession(ctx context.Context, addr string) (delivered bool, err error) {
	c.mu.RLock()
	svid := c.svid
	c.mu.RUnlock()
	if svid == nil {
		return false, ErrNoSVID
	}
	conn, err := c.dial(addr, svid)
	if err != nil {
		return false, err
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := meshfedv1.NewWorkloadIdentityServiceClient(conn).WatchBundle(ctx)
	if err != nil {
		return false, err
	}

	resps := make(chan *meshfedv1.WatchBundleResponse)
	recvErr := make(chan error, 1)
	recvDone := make(chan struct{})
	go func() {
		defer close(recvDone)
		for {
			r, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case resps <- r:
			case <-ctx.Done():
				return
			}
		}
	}()
	// Cancelling ends Recv; wait for the goroutine so none outlives us.
	defer func() {
		cancel()
		<-recvDone
	}()

	// Only this goroutine sends on the stream. A failed Send means the
	// stream is broken; Recv then returns the reason.
	send := func(req *meshfedv1.WatchBundleRequest) error {
		if err := stream.Send(req); err != nil {
			if errors.Is(err, io.EOF) {
				select {
				case err = <-recvErr:
				case <-ctx.Done():
					err = ctx.Err()
				}
			}
			return fmt.Errorf("sending on the bundle stream: %w", err)
		}
		return nil
	}
	ack := func(seq uint64) error {
		c.mu.RLock()
		authority := c.authorityID
		c.mu.RUnlock()
		return send(&meshfedv1.WatchBundleRequest{AckSequence: seq, SvidAuthorityId: authority})
	}
	if err := send(&meshfedv1.WatchBundleRequest{}); err != nil {
		return false, err
	}
	c.log.Debug("bundle stream open", "addr", addr)

	events, unsubscribe := c.Subscribe()
	defer unsubscribe()
	expiry := time.NewTimer(max(0, svid.Certificates[0].NotAfter.Sub(c.cfg.Now())))
	defer expiry.Stop()
	// A bundle older than the one applied waits in stale for a newer one;
	// staleTimer applies it when none came (see Config.StaleBundleGrace).
	var stale *meshfedv1.WatchBundleResponse
	staleTimer := time.NewTimer(0)
	staleTimer.Stop()
	defer staleTimer.Stop()

	for {
		select {
		case <-ctx.Done():
			return delivered, ctx.Err()
		case err := <-recvErr:
			return delivered, err
		case <-expiry.C:
			return delivered, errReconnect
		case r := <-resps:
			seq := r.GetBundle().GetSequence()
			c.mu.RLock()
			applied := c.bundleSeq
			c.mu.RUnlock()
			if seq < applied {
				// A server behind the one that sent the newer bundle. Keep
				// trusting what we have and say so.
				if stale == nil {
					staleTimer.Reset(c.cfg.StaleBundleGrace)
				}
				stale = r
				c.log.Debug("ignoring an older bundle", "addr", addr, "sequence", seq, "applied", applied)
				if err := ack(applied); err != nil {
					return delivered, err
				}
				continue
			}
			stale = nil
			staleTimer.Stop()
			if err := c.applyBundle(r); err != nil {
				c.log.Warn("ignoring an invalid bundle", "addr", addr, "sequence", seq, "error", err)
				continue
			}
			delivered = true
			if err := ack(seq); err != nil {
				return delivered, err
			}
		case <-staleTimer.C:
			if stale == nil {
				continue
			}
			r := stale
			stale = nil
			c.log.Warn("the bundle sequence went back and no newer bundle came, applying it", "addr", addr, "sequence", r.GetBundle().GetSequence())
			if err := c.applyBundle(r); err != nil {
				c.log.Warn("ignoring an invalid bundle", "addr", addr, "error", err)
				continue
			}
			delivered = true
			if err := ack(r.GetBundle().GetSequence()); err != nil {
				return delivered, err
			}
		case ev := <-events:
			if ev&EventSVID == 0 || !delivered {
				continue
			}
			c.mu.RLock()
			seq := c.bundleSeq
			c.mu.RUnlock()
			if err := ack(seq); err != nil {
				return delivered, err
			}
		}
	}
}

// applyBundle installs the bundles of a WatchBundleResponse and the active
// authority it names. If the SVID's authority is not the active one, a
// renewal is scheduled after a random delay (RenewJitter); if the new
// bundle no longer trusts the SVID's chain, a new SVID is due at once (renew
// then attests with the token, since the old one cannot authenticate).
func (c *Client) applyBundle(r *meshfedv1.WatchBundleResponse) error {
	c.mu.RLock()
	td := c.td
	c.mu.RUnlock()
	own, err := parseTrustBundle(r.GetBundle(), td)
	if err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	if own.TrustDomain() != td {
		return fmt.Errorf("bundle: trust domain %s, but the SVID is in %s", own.TrustDomain(), td)
	}
	fed := c.parseFederated(r.GetFederatedBundles(), td)
	now := c.cfg.Now()

	c.mu.Lock()
	changed := c.own == nil || !c.own.Equal(own) || !bundlesEqual(c.federated, fed) || c.activeAuthority != r.GetActiveAuthorityId()
	c.own, c.federated, c.bundleSeq = own, fed, r.GetBundle().GetSequence()
	c.activeAuthority = r.GetActiveAuthorityId()
	untrusted := c.svid != nil && verifyChain(c.svid.Certificates, own, now) != nil
	if untrusted {
		c.rotateAt = now
	} else {
		c.scheduleRotationLocked(now, false)
	}
	rotateAt, authority := c.rotateAt, c.authorityID
	c.mu.Unlock()

	if untrusted {
		c.log.Warn("the trust bundle no longer trusts the SVID, replacing it now", "sequence", r.GetBundle().GetSequence())
	}
	if changed {
		c.log.Info("trust bundle updated", "sequence", r.GetBundle().GetSequence(), "roots", len(own.X509Authorities()),
			"federated", len(fed), "active_authority", r.GetActiveAuthorityId(), "svid_authority", authority)
		if !rotateAt.IsZero() && !untrusted {
			c.log.Info("the cluster signs with another authority, renewing soon", "active_authority", r.GetActiveAuthorityId(),
				"svid_authority", authority, "at", rotateAt)
		}
	}
	if changed || untrusted {
		c.notify(EventBundle)
	}
	return nil
}

// bundlesEqual compares two sets of federated bundles.
func bundlesEqual(a, b map[spiffeid.TrustDomain]*x509bundle.Bundle) bool {
	if len(a) != len(b) {
		return false
	}
	for td, x := range a {
		if y, ok := b[td]; !ok || !x.Equal(y) {
			return false
		}
	}
	return true
}
