package harness

import (
	"fmt"
	"os"
	"slices"
	"time"
)

// Median of xs; the zero value for none.
func Median[T int | int64 | float64 | time.Duration](xs []T) T {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		var zero T
		return zero
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// Percentile of sorted latencies (nearest rank); 0 for none.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(p*float64(len(sorted)-1)+0.5)]
}

// Logf prints progress to stderr with the time of day.
func Logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05 ")+format+"\n", args...)
}

// MS formats a duration as milliseconds with two decimals.
func MS(d time.Duration) string { return fmt.Sprintf("%.2fms", MSF(d)) }

// MSF is a duration in (fractional) milliseconds.
func MSF(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
