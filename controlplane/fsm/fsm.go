// Package fsm is meshfed's Raft state machine: it decodes committed
// commands and applies them to the state store, a batch of logs in one
// store transaction.
package fsm

import (
	"fmt"
	"io"
	"log/slog"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"

	"github.com/meshfed/meshfed/controlplane/state"
)

var (
	_ raft.FSM         = (*FSM)(nil)
	_ raft.BatchingFSM = (*FSM)(nil)
)

// Config configures an FSM.
type Config struct {
	// Logger defaults to discarding everything.
	Logger *slog.Logger
}

// Result is the response of every applied command, returned through
// raft.ApplyFuture.Response on the server that proposed it.
type Result struct {
	// Index is the Raft index of the command's log.
	Index uint64
	// Resource is the stored resource after an upsert, or the deleted one
	// after a delete; nil when Err is set. It is shared with the store:
	// never mutate it.
	Resource state.Resource
	// Err is why the command changed nothing, e.g. a wrapped
	// state.ErrVersionMismatch. It is a value, not a failure of the FSM:
	// every server reaches the same one.
	Err error
}

// FSM applies Raft logs to a state store.
type FSM struct {
	logger *slog.Logger
	state  *state.Store
	// namespaces interns the namespaces of decoded writes. Raft applies
	// logs from one goroutine, never concurrently, and only that uses it.
	namespaces map[string]string
}

// New returns an FSM over a new, empty store.
func New(cfg Config) (*FSM, error) {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s, err := state.NewStore()
	if err != nil {
		return nil, err
	}
	return &FSM{logger: logger, state: s, namespaces: make(map[string]string)}, nil
}

// State returns the store the FSM writes; readers use it directly.
func (f *FSM) State() *state.Store { return f.state }

// applyFunc applies the body of one command in tx, whose index is already
// the command's log index, decoding writes with d.
type applyFunc func(tx *state.Txn, d *writeDecoder, body []byte, index uint64) *Result

// commands is the registration table of command decoders. An entry is
// never removed: old logs must still apply.
var commands = map[MessageType]applyFunc{
	UpsertResourceType: applyUpsert,
	DeleteResourceType: applyDelete,
	BatchWriteType:     applyBatch,
}

// Apply applies one log. Raft uses ApplyBatch instead; Apply exists for
// the raft.FSM interface and for callers without batching.
func (f *FSM) Apply(l *raft.Log) any {
	return f.ApplyBatch([]*raft.Log{l})[0]
}

// ApplyBatch applies logs in one store transaction, so readers see the
// batch at once and pay one commit. Every command either applies fully or
// changes nothing (its Result says why), so one failing command does not
// hold back the others. Only LogCommand entries are applied; the others get
// a nil response.
//
// An undecodable command or an unknown message type is a bug in whoever
// proposed it, not input: the FSM panics rather than diverge from the other
// servers or skip a write silently.
func (f *FSM) ApplyBatch(logs []*raft.Log) []any {
	out := make([]any, len(logs))
	var tx *state.Txn
	d := writeDecoder{namespaces: f.namespaces}
	for i, l := range logs {
		if l.Type != raft.LogCommand {
			continue
		}
		if tx == nil {
			tx = f.state.WriteTxn(l.Index)
			defer tx.Abort()
		}
		tx.SetIndex(l.Index)
		out[i] = f.applyCommand(tx, &d, l)
	}
	if tx != nil {
		tx.Commit()
	}
	return out
}

func (f *FSM) applyCommand(tx *state.Txn, d *writeDecoder, l *raft.Log) *Result {
	if len(l.Data) == 0 {
		panic(fmt.Sprintf("fsm: log %d: empty command", l.Index))
	}
	t := MessageType(l.Data[0])
	fn, ok := commands[t]
	if !ok {
		panic(fmt.Sprintf("fsm: log %d: unknown message type %d: a command from a newer meshfed, or a bug", l.Index, uint8(t)))
	}
	return fn(tx, d, l.Data[1:], l.Index)
}

func applyUpsert(tx *state.Txn, d *writeDecoder, body []byte, index uint64) *Result {
	w := d.decode(UpsertResourceType, body, index)
	r, err := tx.Upsert(w)
	return &Result{Index: index, Resource: r, Err: err}
}

func applyDelete(tx *state.Txn, d *writeDecoder, body []byte, index uint64) *Result {
	w := d.decode(DeleteResourceType, body, index)
	r, err := tx.Delete(w)
	return &Result{Index: index, Resource: r, Err: err}
}

// applyBatch checks every write of the batch against the state before the
// batch, then applies them all; its
// Result carries the last write's resource. A write that passed its check
// cannot fail short of a malformed payload, which, like an undecodable
// command, is a bug of the proposer: the store cannot undo the writes
// before it, so the FSM stops rather than apply half a batch.
func applyBatch(tx *state.Txn, _ *writeDecoder, body []byte, index uint64) *Result {
	var b meshfedv1.ResourceWriteBatch
	if err := proto.Unmarshal(body, &b); err != nil {
		panic(fmt.Sprintf("fsm: log %d: undecodable %v command: %v", index, BatchWriteType, err))
	}
	for _, w := range b.GetWrites() {
		if err := tx.Check(w); err != nil {
			return &Result{Index: index, Err: err}
		}
	}
	res := &Result{Index: index}
	for i, w := range b.GetWrites() {
		var err error
		if len(w.GetPayload()) > 0 {
			res.Resource, err = tx.Upsert(w)
		} else {
			res.Resource, err = tx.Delete(w)
		}
		if err != nil {
			panic(fmt.Sprintf("fsm: log %d: write %d of a checked batch failed: %v", index, i, err))
		}
	}
	return res
}

// Snapshot returns a point-in-time view of the state for Raft to persist
// while applying goes on.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	return &snapshot{snap: f.state.Snapshot()}, nil
}

// Restore replaces the state with a snapshot. On error the state is left as
// it was.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	if err := f.state.Restore(rc); err != nil {
		return fmt.Errorf("restoring state snapshot: %w", err)
	}
	f.logger.Info("restored state snapshot", "index", f.state.LatestIndex())
	return nil
}

// snapshot adapts state.Snapshot to raft.FSMSnapshot.
type snapshot struct {
	snap *state.Snapshot
}

func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	if err := s.snap.Persist(sink); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("persisting state snapshot: %w", err)
	}
	return sink.Close()
}

func (s *snapshot) Release() { s.snap.Release() }
