package svidclient

import "strings"

// Event says what changed. Notifications coalesce: a subscriber that has not
// yet received the previous value gets one value holding both bits.
type Event uint8

const (
	// EventSVID: a new SVID (and key) is installed.
	EventSVID Event = 1 << iota
	// EventBundle: the trust bundle or a federated bundle changed, or the
	// cluster's active authority did.
	EventBundle
)

func (e Event) String() string {
	var parts []string
	if e&EventSVID != 0 {
		parts = append(parts, "svid")
	}
	if e&EventBundle != 0 {
		parts = append(parts, "bundle")
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, "|")
}

// Subscribe returns a channel that receives an Event after every change of
// the SVID or the bundles, and a function that ends the subscription. The
// channel holds at most one pending value, so a slow reader never blocks
// the client; it reads the current state (GetX509SVID, Status, ...) when it
// wakes up. The channel is not closed.
func (c *Client) Subscribe() (<-chan Event, func()) {
	ch := make(chan Event, 1)
	c.subMu.Lock()
	c.subs[ch] = struct{}{}
	c.subMu.Unlock()
	return ch, func() {
		c.subMu.Lock()
		delete(c.subs, ch)
		c.subMu.Unlock()
	}
}

// notify sends ev to every subscriber, merging it into a value not yet read.
func (c *Client) notify(ev Event) {
	c.subMu.Lock()
	defer c.subMu.Unlock()
	for ch := range c.subs {
		e := ev
		// Only notify sends, under subMu: once the pending value is taken
		// out, the send cannot block.
		for {
			select {
			case ch <- e:
			default:
				select {
				case old := <-ch:
					e |= old
				default:
				}
				continue
			}
			break
		}
	}
}
