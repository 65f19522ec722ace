package fsm

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/controlplane/state"
)

const kindService = meshfedv1.ResourceKind_RESOURCE_KIND_SERVICE

func newFSM(t *testing.T) *FSM {
	t.Helper()
	f, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func svc(name string, port uint32) *meshfedv1.Service {
	return &meshfedv1.Service{Meta: &meshfedv1.Meta{Namespace: "default", Name: name}, Port: port, Protocol: meshfedv1.Protocol_PROTOCOL_TCP}
}

// cmdLog returns the log at index carrying command t for r.
func cmdLog(t *testing.T, index uint64, typ MessageType, r state.Resource, edit func(*meshfedv1.ResourceWrite)) *raft.Log {
	t.Helper()
	kind, _ := state.KindOf(r)
	w := &meshfedv1.ResourceWrite{Kind: kind, Namespace: r.GetMeta().GetNamespace(), Name: r.GetMeta().GetName(), Time: timestamppb.Now()}
	if typ == UpsertResourceType {
		var err error
		if w.Payload, err = proto.Marshal(r); err != nil {
			t.Fatal(err)
		}
	}
	if edit != nil {
		edit(w)
	}
	data, err := Encode(typ, w)
	if err != nil {
		t.Fatal(err)
	}
	return &raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: data}
}

func TestApplyBatch(t *testing.T) {
	f := newFSM(t)
	if res := f.Apply(cmdLog(t, 1, UpsertResourceType, svc("web", 80), nil)).(*Result); res.Err != nil || res.Index != 1 {
		t.Fatalf("Apply = %+v", res)
	}

	logs := []*raft.Log{
		cmdLog(t, 2, UpsertResourceType, svc("api", 80), nil),
		{Index: 3, Term: 1, Type: raft.LogConfiguration},
		// Fails: stale expected version; must change nothing.
		cmdLog(t, 4, UpsertResourceType, svc("web", 9999), func(w *meshfedv1.ResourceWrite) { w.ExpectedVersion = 77 }),
		cmdLog(t, 5, UpsertResourceType, svc("db", 5432), func(w *meshfedv1.ResourceWrite) { w.MustNotExist = true }),
		// Fails: already exists.
		cmdLog(t, 6, UpsertResourceType, svc("api", 1), func(w *meshfedv1.ResourceWrite) { w.MustNotExist = true }),
		cmdLog(t, 7, UpsertResourceType, svc("web", 8080), func(w *meshfedv1.ResourceWrite) { w.ExpectedVersion = 1 }),
		{Index: 8, Term: 1, Type: raft.LogNoop},
		cmdLog(t, 9, DeleteResourceType, svc("api", 0), nil),
		// Fails: already deleted.
		cmdLog(t, 10, DeleteResourceType, svc("api", 0), nil),
	}
	out := f.ApplyBatch(logs)
	if len(out) != len(logs) {
		t.Fatalf("ApplyBatch returned %d responses for %d logs", len(out), len(logs))
	}
	wantErr := map[uint64]error{4: state.ErrVersionMismatch, 6: state.ErrAlreadyExists, 10: state.ErrNotFound}
	for i, l := range logs {
		if l.Type != raft.LogCommand {
			if out[i] != nil {
				t.Errorf("log %d (%v): response %v, want nil", l.Index, l.Type, out[i])
			}
			continue
		}
		res, ok := out[i].(*Result)
		if !ok {
			t.Fatalf("log %d: response %T", l.Index, out[i])
		}
		if res.Index != l.Index {
			t.Errorf("log %d: result index %d", l.Index, res.Index)
		}
		if want := wantErr[l.Index]; !errors.Is(res.Err, want) || (want == nil) != (res.Err == nil) {
			t.Errorf("log %d: err = %v, want %v", l.Index, res.Err, want)
		}
		if res.Err == nil && res.Resource == nil {
			t.Errorf("log %d: no resource in a successful result", l.Index)
		}
	}

	st := f.State()
	_, items, _, err := st.List(nil, state.ListParams{Kind: kindService})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][2]uint64{}
	for _, r := range items {
		got[r.GetMeta().GetName()] = [2]uint64{uint64(r.(*meshfedv1.Service).GetPort()), r.GetMeta().GetVersion()}
	}
	want := map[string][2]uint64{"web": {8080, 7}, "db": {5432, 5}}
	if len(got) != len(want) || got["web"] != want["web"] || got["db"] != want["db"] {
		t.Errorf("services (port, version) = %v, want %v", got, want)
	}
	if idx := st.KindIndex(nil, kindService); idx != 9 {
		t.Errorf("service index = %d, want 9", idx)
	}
}

func TestApplyPanicsOnBadCommand(t *testing.T) {
	for name, data := range map[string][]byte{
		"empty":        nil,
		"unknown type": {200, 1, 2},
		"undecodable":  {byte(UpsertResourceType), 0xff, 0xff},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFSM(t)
			defer func() {
				r := recover()
				if r == nil {
					t.Fatal("no panic")
				}
				if !strings.Contains(r.(string), "log 42") {
					t.Errorf("panic %q does not name the log", r)
				}
			}()
			f.Apply(&raft.Log{Index: 42, Type: raft.LogCommand, Data: data})
		})
	}
}

func TestEncode(t *testing.T) {
	w := &meshfedv1.ResourceWrite{Kind: kindService, Name: "x"}
	data, err := Encode(DeleteResourceType, w)
	if err != nil || MessageType(data[0]) != DeleteResourceType {
		t.Fatalf("Encode = %x, %v", data, err)
	}
	var back meshfedv1.ResourceWrite
	if err := proto.Unmarshal(data[1:], &back); err != nil || !proto.Equal(&back, w) {
		t.Errorf("decoded %v, %v", &back, err)
	}
	if _, err := Encode(MessageType(0), w); err == nil {
		t.Error("Encode of type 0 succeeded")
	}
}

// sink is a raft.SnapshotSink into a buffer.
type sink struct {
	bytes.Buffer
	closed, cancelled bool
}

func (s *sink) ID() string    { return "test" }
func (s *sink) Close() error  { s.closed = true; return nil }
func (s *sink) Cancel() error { s.cancelled = true; return nil }

var _ raft.SnapshotSink = (*sink)(nil)

func TestSnapshotRestore(t *testing.T) {
	f := newFSM(t)
	f.ApplyBatch([]*raft.Log{
		cmdLog(t, 1, UpsertResourceType, svc("web", 80), nil),
		cmdLog(t, 2, UpsertResourceType, svc("api", 81), nil),
		cmdLog(t, 3, UpsertResourceType, svc("web", 82), nil),
	})
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	// Applying after the snapshot does not change it.
	f.Apply(cmdLog(t, 4, DeleteResourceType, svc("web", 0), nil))
	var s sink
	if err := snap.Persist(&s); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	if !s.closed || s.cancelled {
		t.Errorf("sink closed=%v cancelled=%v", s.closed, s.cancelled)
	}

	g := newFSM(t)
	abandon := g.State().AbandonCh()
	if err := g.Restore(io.NopCloser(bytes.NewReader(s.Bytes()))); err != nil {
		t.Fatal(err)
	}
	select {
	case <-abandon:
	default:
		t.Error("restore did not wake watchers")
	}
	_, web, err := g.State().Get(nil, kindService, "default", "web")
	if err != nil || web == nil {
		t.Fatalf("restored web = %v, %v", web, err)
	}
	if m := web.GetMeta(); m.GetVersion() != 3 || m.GetCreateVersion() != 1 || web.(*meshfedv1.Service).GetPort() != 82 {
		t.Errorf("restored web = %v", web)
	}
	if idx := g.State().KindIndex(nil, kindService); idx != 3 {
		t.Errorf("restored index = %d, want 3", idx)
	}

	// A failed restore leaves the state alone.
	if err := g.Restore(io.NopCloser(strings.NewReader("garbage"))); err == nil {
		t.Error("restore of garbage succeeded")
	}
	if _, web, _ := g.State().Get(nil, kindService, "default", "web"); web == nil {
		t.Error("failed restore lost state")
	}
}

// failingSink fails every write.
type failingSink struct{ sink }

func (s *failingSink) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestSnapshotPersistFailureCancels(t *testing.T) {
	f := newFSM(t)
	f.Apply(cmdLog(t, 1, UpsertResourceType, svc("web", 80), nil))
	snap, _ := f.Snapshot()
	defer snap.Release()
	var s failingSink
	if err := snap.Persist(&s); err == nil {
		t.Fatal("Persist succeeded")
	}
	if !s.cancelled || s.closed {
		t.Errorf("sink closed=%v cancelled=%v, want cancelled", s.closed, s.cancelled)
	}
}

// batchLog returns a batch command of upserts (payload) and deletes.
func batchLog(t *testing.T, index uint64, writes ...*meshfedv1.ResourceWrite) *raft.Log {
	t.Helper()
	data, err := Encode(BatchWriteType, &meshfedv1.ResourceWriteBatch{Writes: writes})
	if err != nil {
		t.Fatal(err)
	}
	return &raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: data}
}

func upsertWrite(t *testing.T, s *meshfedv1.Service, expected uint64) *meshfedv1.ResourceWrite {
	t.Helper()
	payload, err := proto.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return &meshfedv1.ResourceWrite{Kind: kindService, Namespace: "default", Name: s.Meta.Name, Payload: payload, ExpectedVersion: expected, Time: timestamppb.Now()}
}

func TestBatchWriteIsAtomic(t *testing.T) {
	f := newFSM(t)
	f.Apply(cmdLog(t, 1, UpsertResourceType, svc("web", 80), nil))
	f.Apply(cmdLog(t, 2, UpsertResourceType, svc("db", 5432), nil))

	// The second write's expected version is stale: nothing applies.
	res := f.Apply(batchLog(t, 3, upsertWrite(t, svc("web", 81), 1), upsertWrite(t, svc("db", 5433), 1))).(*Result)
	if !errors.Is(res.Err, state.ErrVersionMismatch) {
		t.Fatalf("batch with a stale version: %v", res.Err)
	}
	_, web, _ := f.State().Get(nil, kindService, "default", "web")
	if web.(*meshfedv1.Service).Port != 80 {
		t.Fatal("a refused batch changed web")
	}

	// Both conditions hold: both apply at the batch's index, and a delete
	// rides along.
	res = f.Apply(batchLog(t, 4, upsertWrite(t, svc("web", 81), 1), upsertWrite(t, svc("api", 8080), 0),
		&meshfedv1.ResourceWrite{Kind: kindService, Namespace: "default", Name: "db", ExpectedVersion: 2})).(*Result)
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	_, web, _ = f.State().Get(nil, kindService, "default", "web")
	_, api, _ := f.State().Get(nil, kindService, "default", "api")
	_, db, _ := f.State().Get(nil, kindService, "default", "db")
	if web.(*meshfedv1.Service).Port != 81 || web.GetMeta().GetVersion() != 4 || api == nil || api.GetMeta().GetVersion() != 4 || db != nil {
		t.Fatalf("after the batch: web=%v api=%v db=%v", web, api, db)
	}

	// Deleting what does not exist refuses the whole batch.
	res = f.Apply(batchLog(t, 5, upsertWrite(t, svc("web", 82), 0),
		&meshfedv1.ResourceWrite{Kind: kindService, Namespace: "default", Name: "db"})).(*Result)
	if !errors.Is(res.Err, state.ErrNotFound) {
		t.Fatalf("batch deleting a missing service: %v", res.Err)
	}
	_, web, _ = f.State().Get(nil, kindService, "default", "web")
	if web.(*meshfedv1.Service).Port != 81 {
		t.Fatal("a refused batch changed web")
	}
}
