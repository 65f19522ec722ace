package svidclient

import (
	"context"
	"time"
)

// maintain renews the SVID when it is due: at half life, or soon after the
// cluster switched to another CA authority. A failed renewal is retried with
// backoff, also when a server refused it (the refusal may pass, say while a
// server catches up with a rotation); once the SVID has expired the next
// attempt attests again with the token. It returns when ctx ends.
func (c *Client) maintain(ctx context.Context) {
	defer c.wg.Done()
	events, unsubscribe := c.Subscribe()
	defer unsubscribe()
	bo := newBackoff(c.cfg.MinBackoff, c.cfg.MaxBackoff)
	var retryAt time.Time // set while renewals fail
	for {
		c.mu.RLock()
		at, reason := c.nextRenewalLocked()
		c.mu.RUnlock()
		retrying := !retryAt.IsZero()
		if retrying {
			at, reason = retryAt, "retrying a failed renewal"
		}
		t := time.NewTimer(max(0, at.Sub(c.cfg.Now())))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case ev := <-events:
			// A new SVID (a manual Renew) or a new active authority moves
			// the schedule: compute it again.
			t.Stop()
			if ev&EventSVID != 0 {
				retryAt = time.Time{}
				bo.reset()
			}
			continue
		case <-t.C:
		}
		if err := c.renewDue(ctx, reason, retrying); err != nil {
			if ctx.Err() != nil {
				return
			}
			d := bo.next()
			retryAt = c.cfg.Now().Add(d)
			c.log.Error("renewing the SVID failed", "error", err, "retry_in", d)
			continue
		}
		retryAt = time.Time{}
		bo.reset()
	}
}

// renewDue renews unless another renewal got there first; a retry always
// renews.
func (c *Client) renewDue(ctx context.Context, reason string, retry bool) error {
	c.renewMu.Lock()
	defer c.renewMu.Unlock()
	c.mu.RLock()
	at, _ := c.nextRenewalLocked()
	c.mu.RUnlock()
	if !retry && c.cfg.Now().Before(at) {
		return nil
	}
	c.log.Debug("renewing the SVID", "reason", reason)
	return c.renew(ctx)
}
