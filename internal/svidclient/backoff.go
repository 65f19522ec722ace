package svidclient

import (
	"context"
	"math/rand/v2"
	"time"
)

// backoff is exponential backoff with jitter: each delay is drawn from the
// upper half of a window that doubles from min up to max, so retries keep
// slowing down but clients that failed together do not retry together.
type backoff struct {
	min, max time.Duration
	window   time.Duration
}

func newBackoff(min, max time.Duration) *backoff {
	return &backoff{min: min, max: max}
}

// next returns the delay before the next attempt.
func (b *backoff) next() time.Duration {
	if b.window == 0 {
		b.window = b.min
	} else {
		b.window = min(b.window*2, b.max)
	}
	half := b.window / 2
	return half + rand.N(half+1)
}

// reset starts again from min after a success.
func (b *backoff) reset() { b.window = 0 }

// sleep waits for d or until ctx ends, and returns ctx's error then.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// jitter returns a random duration in [0, max).
func jitter(max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	return rand.N(max)
}
