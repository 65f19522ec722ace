package state

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/go-memdb"
	"google.golang.org/protobuf/proto"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

const (
	kindService  = meshfedv1.ResourceKind_RESOURCE_KIND_SERVICE
	kindWorkload = meshfedv1.ResourceKind_RESOURCE_KIND_WORKLOAD
	kindToken    = meshfedv1.ResourceKind_RESOURCE_KIND_TOKEN
	kindImported = meshfedv1.ResourceKind_RESOURCE_KIND_IMPORTED_SERVICE
)

func TestKindRegistry(t *testing.T) {
	for k := meshfedv1.ResourceKind(1); int(k) < len(meshfedv1.ResourceKind_name); k++ {
		info, ok := LookupKind(k)
		if !ok {
			t.Fatalf("LookupKind(%v): missing", k)
		}
		msg, err := NewMessage(k)
		if err != nil {
			t.Fatalf("NewMessage(%v): %v", k, err)
		}
		if got, ok := KindOf(msg); !ok || got != k {
			t.Errorf("KindOf(NewMessage(%v)) = %v, %v", k, got, ok)
		}
		if info.Table == "" {
			t.Errorf("%v has no table", k)
		}
	}
	if _, err := NewMessage(meshfedv1.ResourceKind_RESOURCE_KIND_UNSPECIFIED); !errors.Is(err, ErrUnknownKind) {
		t.Errorf("NewMessage(UNSPECIFIED) = %v, want ErrUnknownKind", err)
	}
	if _, ok := KindOf(&meshfedv1.Meta{}); ok {
		t.Error("KindOf(Meta) reported a kind")
	}
	if _, ok := LookupKind(99); ok {
		t.Error("LookupKind(99) reported a kind")
	}
}

func TestUpsertGet(t *testing.T) {
	s := newTestStore(t)
	got := mustUpsert(t, s, 10, service("default", "web", 80))
	want := service("default", "web", 80)
	if m := got.GetMeta(); m.GetVersion() != 10 || m.GetCreateVersion() != 10 ||
		!m.GetCreateTime().AsTime().Equal(testTime) || !m.GetUpdateTime().AsTime().Equal(testTime) {
		t.Fatalf("stored meta = %v", m)
	}

	idx, r, err := s.Get(nil, kindService, "default", "web")
	if err != nil || idx != 10 || r == nil {
		t.Fatalf("Get = %d, %v, %v", idx, r, err)
	}
	if r.(*meshfedv1.Service).GetPort() != want.GetPort() {
		t.Errorf("Get port = %d", r.(*meshfedv1.Service).GetPort())
	}
	if _, r, err := s.Get(nil, kindService, "other", "web"); err != nil || r != nil {
		t.Errorf("Get of missing = %v, %v; want nil, nil", r, err)
	}
	if _, _, err := s.Get(nil, 0, "default", "web"); !errors.Is(err, ErrUnknownKind) {
		t.Errorf("Get(UNSPECIFIED) = %v, want ErrUnknownKind", err)
	}

	// An update keeps create_version and create_time.
	later := upsertWrite(t, service("default", "web", 8080))
	later.Time.Seconds += 60
	var updated Resource
	if err := apply(t, s, 12, func(tx *Txn) error { updated, err = tx.Upsert(later); return err }); err != nil {
		t.Fatal(err)
	}
	m := updated.GetMeta()
	if m.GetVersion() != 12 || m.GetCreateVersion() != 10 || !m.GetCreateTime().AsTime().Equal(testTime) ||
		!m.GetUpdateTime().AsTime().Equal(testTime.Add(time.Minute)) {
		t.Errorf("updated meta = %v", m)
	}
	// The first object, which readers may still hold, is unchanged.
	if r.GetMeta().GetVersion() != 10 || r.(*meshfedv1.Service).GetPort() != 80 {
		t.Errorf("stored object was mutated by an update: %v", r)
	}
	if got := s.KindIndex(nil, kindService); got != 12 {
		t.Errorf("KindIndex = %d, want 12", got)
	}
	if got := s.KindIndex(nil, kindWorkload); got != 0 {
		t.Errorf("KindIndex(workload) = %d, want 0", got)
	}
	if got := s.LatestIndex(); got != 12 {
		t.Errorf("LatestIndex = %d, want 12", got)
	}
}

func TestWriteConditions(t *testing.T) {
	type step struct {
		name    string
		idx     uint64
		edit    func(w *meshfedv1.ResourceWrite)
		del     bool
		wantErr error
		// wantVersion is the stored version after the step (0: missing).
		wantVersion uint64
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"create with must_not_exist, then conflict", []step{
			{"create", 5, func(w *meshfedv1.ResourceWrite) { w.MustNotExist = true }, false, nil, 5},
			{"again", 6, func(w *meshfedv1.ResourceWrite) { w.MustNotExist = true }, false, ErrAlreadyExists, 5},
		}},
		{"must_exist", []step{
			{"missing", 5, func(w *meshfedv1.ResourceWrite) { w.MustExist = true }, false, ErrNotFound, 0},
			{"create", 6, nil, false, nil, 6},
			{"present", 7, func(w *meshfedv1.ResourceWrite) { w.MustExist = true }, false, nil, 7},
		}},
		{"compare and swap", []step{
			{"missing with expected version", 5, func(w *meshfedv1.ResourceWrite) { w.ExpectedVersion = 3 }, false, ErrVersionMismatch, 0},
			{"create", 6, nil, false, nil, 6},
			{"stale", 7, func(w *meshfedv1.ResourceWrite) { w.ExpectedVersion = 5 }, false, ErrVersionMismatch, 6},
			{"current", 8, func(w *meshfedv1.ResourceWrite) { w.ExpectedVersion = 6 }, false, nil, 8},
		}},
		{"delete", []step{
			{"missing", 5, nil, true, ErrNotFound, 0},
			{"create", 6, nil, false, nil, 6},
			{"stale", 7, func(w *meshfedv1.ResourceWrite) { w.ExpectedVersion = 2 }, true, ErrVersionMismatch, 6},
			{"current", 8, func(w *meshfedv1.ResourceWrite) { w.ExpectedVersion = 6 }, true, nil, 0},
			{"again", 9, nil, true, ErrNotFound, 0},
		}},
		{"invalid", []step{
			{"both flags", 5, func(w *meshfedv1.ResourceWrite) { w.MustExist, w.MustNotExist = true, true }, false, ErrInvalidWrite, 0},
			{"bad payload", 5, func(w *meshfedv1.ResourceWrite) { w.Payload = []byte{0xff} }, false, ErrInvalidWrite, 0},
			{"name mismatch", 5, func(w *meshfedv1.ResourceWrite) { w.Name = "other" }, false, ErrInvalidWrite, 0},
			{"no namespace", 5, func(w *meshfedv1.ResourceWrite) {
				w.Namespace = ""
				w.Payload, _ = proto.Marshal(&meshfedv1.Service{Meta: &meshfedv1.Meta{Name: "web"}})
			}, false, ErrInvalidWrite, 0},
			{"unknown kind", 5, func(w *meshfedv1.ResourceWrite) { w.Kind = 0 }, false, ErrUnknownKind, 0},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newTestStore(t)
			for _, st := range tt.steps {
				before := s.LatestIndex()
				w := upsertWrite(t, service("default", "web", 80))
				if st.edit != nil {
					st.edit(w)
				}
				err := apply(t, s, st.idx, func(tx *Txn) error {
					var err error
					if st.del {
						_, err = tx.Delete(w)
					} else {
						_, err = tx.Upsert(w)
					}
					return err
				})
				if !errors.Is(err, st.wantErr) || (err == nil) != (st.wantErr == nil) {
					t.Fatalf("%s: err = %v, want %v", st.name, err, st.wantErr)
				}
				_, r, _ := s.Get(nil, kindService, "default", "web")
				var v uint64
				if r != nil {
					v = r.GetMeta().GetVersion()
				}
				if v != st.wantVersion {
					t.Fatalf("%s: stored version = %d, want %d", st.name, v, st.wantVersion)
				}
				if err != nil && s.LatestIndex() != before {
					t.Fatalf("%s: failed write moved the index from %d to %d", st.name, before, s.LatestIndex())
				}
			}
		})
	}
}

func TestVersionMismatchMessage(t *testing.T) {
	s := newTestStore(t)
	mustUpsert(t, s, 7, service("default", "web", 80))
	w := upsertWrite(t, service("default", "web", 81))
	w.ExpectedVersion = 3
	err := apply(t, s, 8, func(tx *Txn) error { _, err := tx.Upsert(w); return err })
	want := `version mismatch: service "default/web": stored version 7, expected 3`
	if err == nil || err.Error() != want {
		t.Errorf("err = %v, want %q", err, want)
	}
}

// TestFailedWriteInBatch checks that a failing command leaves a shared
// transaction usable and unchanged, so the rest of a batch commits.
func TestFailedWriteInBatch(t *testing.T) {
	s := newTestStore(t)
	mustUpsert(t, s, 1, service("default", "web", 80))
	tx := s.WriteTxn(2)
	defer tx.Abort()
	if _, err := tx.Upsert(upsertWrite(t, service("default", "api", 80))); err != nil {
		t.Fatal(err)
	}
	tx.SetIndex(3)
	bad := upsertWrite(t, service("default", "web", 99))
	bad.ExpectedVersion = 42
	if _, err := tx.Upsert(bad); !errors.Is(err, ErrVersionMismatch) {
		t.Fatalf("err = %v", err)
	}
	tx.SetIndex(4)
	if _, err := tx.Upsert(upsertWrite(t, service("default", "db", 5432))); err != nil {
		t.Fatal(err)
	}
	tx.Commit()

	_, items, _, err := s.List(nil, ListParams{Kind: kindService})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := names(items), []string{"default/api", "default/db", "default/web"}; !slices.Equal(got, want) {
		t.Fatalf("services = %v, want %v", got, want)
	}
	for _, r := range items {
		want := map[string]uint64{"api": 2, "db": 4, "web": 1}[r.GetMeta().GetName()]
		if r.GetMeta().GetVersion() != want {
			t.Errorf("%s version = %d, want %d", r.GetMeta().GetName(), r.GetMeta().GetVersion(), want)
		}
	}
	if p := items[2].(*meshfedv1.Service).GetPort(); p != 80 {
		t.Errorf("web port = %d after a failed write, want 80", p)
	}
	if got := s.KindIndex(nil, kindService); got != 4 {
		t.Errorf("KindIndex = %d, want 4", got)
	}
}

func TestListPagination(t *testing.T) {
	s := newTestStore(t)
	idx := uint64(1)
	for _, ns := range []string{"alpha", "beta", "gamma"} {
		for i := range 5 {
			mustUpsert(t, s, idx, service(ns, fmt.Sprintf("svc-%d", i), 80))
			idx++
		}
	}
	// Names that are prefixes of one another must not leak across pages.
	mustUpsert(t, s, idx, service("beta", "svc-1x", 80))
	mustUpsert(t, s, idx+1, service("bet", "svc-0", 80))

	tests := []struct {
		namespace string
		limit     int
		want      []string
	}{
		{"", 0, nil}, // filled below: everything
		{"beta", 2, []string{"beta/svc-0", "beta/svc-1", "beta/svc-1x", "beta/svc-2", "beta/svc-3", "beta/svc-4"}},
		{"beta", 4, []string{"beta/svc-0", "beta/svc-1", "beta/svc-1x", "beta/svc-2", "beta/svc-3", "beta/svc-4"}},
		{"bet", 1, []string{"bet/svc-0"}},
		{"delta", 3, nil},
		{"", 7, nil},
	}
	_, all, next, err := s.List(nil, ListParams{Kind: kindService})
	if err != nil || next != "" || len(all) != 17 {
		t.Fatalf("List all = %d items, next %q, %v", len(all), next, err)
	}
	tests[0].want, tests[5].want = names(all), names(all)
	if !slices.IsSorted(tests[0].want) {
		t.Errorf("List is not in key order: %v", tests[0].want)
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%d", tt.namespace, tt.limit), func(t *testing.T) {
			var got []string
			after := ""
			for pages := 0; ; pages++ {
				if pages > 20 {
					t.Fatal("pagination does not end")
				}
				_, items, next, err := s.List(nil, ListParams{Kind: kindService, Namespace: tt.namespace, After: after, Limit: tt.limit})
				if err != nil {
					t.Fatal(err)
				}
				if tt.limit > 0 && len(items) > tt.limit {
					t.Fatalf("page of %d items, limit %d", len(items), tt.limit)
				}
				got = append(got, names(items)...)
				if next == "" {
					break
				}
				after = next
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("pages = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestListWorkloadsByService(t *testing.T) {
	s := newTestStore(t)
	idx := uint64(1)
	for i := range 6 {
		for _, svc := range []string{"web", "web2", "api"} {
			mustUpsert(t, s, idx, workload("default", fmt.Sprintf("%s-%d", svc, i), svc, fmt.Sprintf("10.0.0.%d", idx)))
			idx++
		}
	}
	mustUpsert(t, s, idx, workload("other", "web-0", "web", "10.0.1.1"))

	var got []string
	after := ""
	for {
		_, items, next, err := s.List(nil, ListParams{Kind: kindWorkload, Namespace: "default", Service: "web", After: after, Limit: 4})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range items {
			if svc := r.(*meshfedv1.Workload).GetService(); svc != "web" {
				t.Fatalf("workload %s of service %q listed for web", r.GetMeta().GetName(), svc)
			}
		}
		got = append(got, names(items)...)
		if next == "" {
			break
		}
		after = next
	}
	want := []string{"default/web-0", "default/web-1", "default/web-2", "default/web-3", "default/web-4", "default/web-5"}
	if !slices.Equal(got, want) {
		t.Errorf("workloads of web = %v, want %v", got, want)
	}

	// Moving a workload to another service moves it in the index.
	w := workload("default", "web-0", "api", "10.0.0.1")
	mustUpsert(t, s, idx+1, w)
	_, items, _, _ := s.List(nil, ListParams{Kind: kindWorkload, Namespace: "default", Service: "web"})
	if len(items) != 5 {
		t.Errorf("web has %d workloads after a move, want 5", len(items))
	}

	for _, p := range []ListParams{
		{Kind: kindWorkload, Service: "web"},
		{Kind: kindService, Namespace: "default", Service: "web"},
		{Kind: kindService, Peer: "p"},
		{Kind: kindService, Limit: -1},
	} {
		if _, _, _, err := s.List(nil, p); err == nil {
			t.Errorf("List(%+v) succeeded", p)
		}
	}
}

func TestListImportedByPeer(t *testing.T) {
	s := newTestStore(t)
	for i, x := range []struct{ peer, ns, name string }{
		{"east", "default", "east-web"}, {"east", "shop", "east-cart"}, {"west", "default", "west-web"}, {"eas", "default", "eas-web"},
	} {
		mustUpsert(t, s, uint64(i+1), &meshfedv1.ImportedService{Meta: &meshfedv1.Meta{Namespace: x.ns, Name: x.name, Peer: x.peer}})
	}
	for _, tt := range []struct {
		peer, ns string
		want     []string
	}{
		{"east", "", []string{"default/east-web", "shop/east-cart"}},
		{"east", "shop", []string{"shop/east-cart"}},
		{"west", "", []string{"default/west-web"}},
		{"north", "", nil},
	} {
		_, items, _, err := s.List(nil, ListParams{Kind: kindImported, Peer: tt.peer, Namespace: tt.ns, Limit: 1})
		if err != nil {
			t.Fatal(err)
		}
		all := names(items)
		if len(items) == 1 {
			_, rest, _, _ := s.List(nil, ListParams{Kind: kindImported, Peer: tt.peer, Namespace: tt.ns, After: resourceID(items[0])})
			all = append(all, names(rest)...)
		}
		if !slices.Equal(all, tt.want) {
			t.Errorf("peer %s ns %q = %v, want %v", tt.peer, tt.ns, all, tt.want)
		}
	}
}

func TestTokenBySecretHash(t *testing.T) {
	s := newTestStore(t)
	hash := bytes.Repeat([]byte{7}, 32)
	tok := &meshfedv1.Token{Meta: &meshfedv1.Meta{Name: "tok-1"}, Kind: meshfedv1.TokenKind_TOKEN_KIND_ADMIN, SecretHash: hash}
	mustUpsert(t, s, 3, tok)
	mustUpsert(t, s, 4, &meshfedv1.Token{Meta: &meshfedv1.Meta{Name: "tok-2"}, Kind: meshfedv1.TokenKind_TOKEN_KIND_READ})

	idx, got, err := s.TokenBySecretHash(nil, hash)
	if err != nil || got == nil || got.GetMeta().GetName() != "tok-1" || idx != 4 {
		t.Fatalf("TokenBySecretHash = %d, %v, %v", idx, got, err)
	}
	for _, h := range [][]byte{nil, bytes.Repeat([]byte{8}, 32)} {
		if _, got, err := s.TokenBySecretHash(nil, h); err != nil || got != nil {
			t.Errorf("TokenBySecretHash(%x) = %v, %v", h, got, err)
		}
	}
	// Another token may not take the same hash.
	dup := &meshfedv1.Token{Meta: &meshfedv1.Meta{Name: "tok-3"}, Kind: meshfedv1.TokenKind_TOKEN_KIND_READ, SecretHash: hash}
	err = apply(t, s, 5, func(tx *Txn) error { _, err := tx.Upsert(upsertWrite(t, dup)); return err })
	if !errors.Is(err, ErrAlreadyExists) {
		t.Errorf("duplicate hash: err = %v, want ErrAlreadyExists", err)
	}
	// The token itself may be updated with its hash.
	mustUpsert(t, s, 6, tok)
	// Cluster-scoped kinds refuse a namespace.
	w := upsertWrite(t, tok)
	w.Namespace = "default"
	if err := apply(t, s, 7, func(tx *Txn) error { _, err := tx.Upsert(w); return err }); !errors.Is(err, ErrInvalidWrite) {
		t.Errorf("token with namespace: err = %v, want ErrInvalidWrite", err)
	}
}

func fired(ws memdb.WatchSet) bool {
	return !ws.Watch(time.After(50 * time.Millisecond))
}

func TestWatches(t *testing.T) {
	s := newTestStore(t)
	mustUpsert(t, s, 1, service("default", "web", 80))

	listWS := func(kind meshfedv1.ResourceKind) memdb.WatchSet {
		ws := memdb.NewWatchSet()
		if _, _, _, err := s.List(ws, ListParams{Kind: kind}); err != nil {
			t.Fatal(err)
		}
		return ws
	}
	getWS := func(name string) memdb.WatchSet {
		ws := memdb.NewWatchSet()
		if _, _, err := s.Get(ws, kindService, "default", name); err != nil {
			t.Fatal(err)
		}
		return ws
	}

	// A missing resource's watch is memdb's nearest node: it may fire on
	// other inserts, so only the created resource's watch is checked.
	services, workloads, web, api := listWS(kindService), listWS(kindWorkload), getWS("web"), getWS("api")
	kindWS := memdb.NewWatchSet()
	s.KindIndex(kindWS, kindService)

	mustUpsert(t, s, 2, service("default", "api", 80))
	for _, tt := range []struct {
		name string
		ws   memdb.WatchSet
		want bool
	}{
		{"list of the changed kind", services, true},
		{"kind index of the changed kind", kindWS, true},
		{"list of another kind", workloads, false},
		{"get of the created resource", api, true},
		{"get of an unchanged resource", web, false},
	} {
		if got := fired(tt.ws); got != tt.want {
			t.Errorf("%s: fired = %v, want %v", tt.name, got, tt.want)
		}
	}

	// A failed write fires nothing.
	services = listWS(kindService)
	w := upsertWrite(t, service("default", "web", 1))
	w.MustNotExist = true
	_ = apply(t, s, 3, func(tx *Txn) error { _, err := tx.Upsert(w); return err })
	if fired(services) {
		t.Error("a failed write fired the kind's watch")
	}

	// A delete fires the list and the get.
	web = getWS("web")
	if err := apply(t, s, 4, func(tx *Txn) error {
		_, err := tx.Delete(&meshfedv1.ResourceWrite{Kind: kindService, Namespace: "default", Name: "web"})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !fired(services) || !fired(web) {
		t.Error("a delete did not fire the watches")
	}
}

func TestSnapshotRestore(t *testing.T) {
	s := newTestStore(t)
	mustUpsert(t, s, 1, &meshfedv1.ClusterRecord{Meta: &meshfedv1.Meta{Name: "cluster"}, Cluster: "c1", TrustDomain: "example.org"})
	mustUpsert(t, s, 2, service("default", "web", 80))
	mustUpsert(t, s, 3, service("default", "web", 8080))
	mustUpsert(t, s, 4, workload("default", "web-1", "web", "10.0.0.1"))
	mustUpsert(t, s, 5, workload("default", "web-2", "web", "10.0.0.2"))
	mustUpsert(t, s, 6, &meshfedv1.Token{Meta: &meshfedv1.Meta{Name: "tok", Labels: map[string]string{"a": "b"}},
		Kind: meshfedv1.TokenKind_TOKEN_KIND_ADMIN, SecretHash: []byte("0123456789abcdef0123456789abcdef")})
	mustUpsert(t, s, 7, &meshfedv1.StoredAuthority{Meta: &meshfedv1.Meta{Name: "a1"}, RootKey: []byte{1, 2, 3}})
	if err := apply(t, s, 9, func(tx *Txn) error {
		_, err := tx.Delete(&meshfedv1.ResourceWrite{Kind: kindWorkload, Namespace: "default", Name: "web-2"})
		return err
	}); err != nil {
		t.Fatal(err)
	}

	snap := s.Snapshot()
	// Writes after the snapshot are not in it.
	mustUpsert(t, s, 10, service("default", "late", 80))
	var buf bytes.Buffer
	if err := snap.Persist(&buf); err != nil {
		t.Fatal(err)
	}
	snap.Release()

	dst := newTestStore(t)
	mustUpsert(t, dst, 1, service("default", "gone", 80))
	ws := memdb.NewWatchSet()
	if _, _, _, err := dst.List(ws, ListParams{Kind: kindService}); err != nil {
		t.Fatal(err)
	}
	abandon := dst.AbandonCh()
	if err := dst.Restore(bytes.NewReader(buf.Bytes())); err != nil {
		t.Fatal(err)
	}
	select {
	case <-abandon:
	default:
		t.Error("restore did not close the abandon channel")
	}
	if !fired(ws) {
		t.Error("restore did not fire a list watch")
	}
	if dst.AbandonCh() == abandon {
		t.Error("restored store kept the closed abandon channel")
	}

	src := dump(t, s)
	delete(src, "services/default\x00late")
	if diff := diffDump(src, dump(t, dst)); diff != "" {
		t.Errorf("restored state differs: %s", diff)
	}
	if got := dst.KindIndex(nil, kindWorkload); got != 9 {
		t.Errorf("restored workload index = %d, want 9", got)
	}
	if _, tok, _ := dst.TokenBySecretHash(nil, []byte("0123456789abcdef0123456789abcdef")); tok == nil {
		t.Error("restored token is not indexed by secret hash")
	}
	_, items, _, _ := dst.List(nil, ListParams{Kind: kindWorkload, Namespace: "default", Service: "web"})
	if len(items) != 1 {
		t.Errorf("restored service index has %d workloads, want 1", len(items))
	}
	// Writing continues on the restored store.
	mustUpsert(t, dst, 11, service("default", "api", 80))
}

func TestRestoreGarbage(t *testing.T) {
	s := newTestStore(t)
	mustUpsert(t, s, 1, service("default", "web", 80))
	var good bytes.Buffer
	snap := s.Snapshot()
	if err := snap.Persist(&good); err != nil {
		t.Fatal(err)
	}
	want := dump(t, s)
	abandon := s.AbandonCh()

	badRecord := append([]byte(nil), good.Bytes()...)
	badRecord = append(badRecord, 3, 8, 99, 0) // a record of kind 99
	tests := map[string][]byte{
		"empty":       nil,
		"noise":       []byte("this is not a snapshot at all, not even close"),
		"huge length": {0xff, 0xff, 0xff, 0xff, 0x0f},
		"truncated":   good.Bytes()[:good.Len()-3],
		"bad format":  {2, 8, 9},
		"bad kind":    badRecord,
	}
	for name, in := range tests {
		t.Run(name, func(t *testing.T) {
			if err := s.Restore(bytes.NewReader(in)); err == nil {
				t.Fatal("Restore succeeded")
			}
			if diff := diffDump(want, dump(t, s)); diff != "" {
				t.Errorf("state changed: %s", diff)
			}
			select {
			case <-abandon:
				t.Error("failed restore closed the abandon channel")
			default:
			}
		})
	}
}

// dump returns every resource of s by table and id key.
func dump(t *testing.T, s *Store) map[string]proto.Message {
	t.Helper()
	out := map[string]proto.Message{}
	for _, k := range Kinds() {
		_, items, _, err := s.List(nil, ListParams{Kind: k.Kind})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range items {
			out[k.Table+"/"+resourceID(r)] = r
		}
	}
	return out
}

// diffDump describes the first difference between two dumps, or returns "".
func diffDump(want, got map[string]proto.Message) string {
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			return fmt.Sprintf("%q missing", k)
		}
		if !proto.Equal(w, g) {
			return fmt.Sprintf("%q = %v, want %v", k, g, w)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			return fmt.Sprintf("unexpected %q", k)
		}
	}
	return ""
}
