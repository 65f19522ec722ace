package testharness

import (
	"fmt"
	"time"
)

// DefaultTimeout bounds the harness' waits (a server becoming ready, a
// cluster electing a leader).
const DefaultTimeout = 60 * time.Second

// pollInterval is the pause between two attempts of Poll.
const pollInterval = 50 * time.Millisecond

// Poll calls cond until it returns nil or timeout has passed, and then
// returns cond's last error.
func Poll(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %s: %w", timeout, err)
		}
		time.Sleep(pollInterval)
	}
}
