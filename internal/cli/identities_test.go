package cli

import (
	"context"
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// CreateIdentity fills in the defaults the real server fills in (namespace,
// SPIFFE ID from the service account or the name) and refuses a duplicate
// and DNS names with '_'.
func (f *fakeServer) CreateIdentity(_ context.Context, r *meshfedv1.CreateIdentityRequest) (*meshfedv1.Identity, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.identityReqs = append(f.identityReqs, r)
	i := proto.CloneOf(r.GetIdentity())
	if i.Meta.Namespace == "" {
		i.Meta.Namespace = "default"
	}
	for n, name := range i.GetDnsNames() {
		if strings.Contains(name, "_") {
			return nil, status.Errorf(codes.InvalidArgument, "invalid identity.dns_names[%d]: %q is not a DNS name", n, name)
		}
	}
	for _, o := range f.identities {
		if o.GetMeta().GetName() == i.GetMeta().GetName() && o.GetMeta().GetNamespace() == i.GetMeta().GetNamespace() {
			return nil, status.Errorf(codes.AlreadyExists, "identity %q already exists", i.GetMeta().GetNamespace()+"/"+i.GetMeta().GetName())
		}
	}
	if i.SpiffeId == "" {
		sa := i.GetServiceAccount()
		if sa == "" {
			sa = i.GetMeta().GetName()
		}
		i.SpiffeId = "spiffe://test.mesh/ns/" + i.GetMeta().GetNamespace() + "/sa/" + sa
	}
	i.Meta.Version = uint64(len(f.identityReqs) + 20)
	f.identities = append(f.identities, i)
	return proto.CloneOf(i), nil
}

func (f *fakeServer) GetIdentity(_ context.Context, r *meshfedv1.GetRequest) (*meshfedv1.Identity, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, i := range f.identities {
		if i.GetMeta().GetName() == r.GetName() && i.GetMeta().GetNamespace() == r.GetNamespace() {
			return proto.CloneOf(i), nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "identity %q not found", r.GetNamespace()+"/"+r.GetName())
}

// ListIdentities pages two identities at a time, the token being the offset.
func (f *fakeServer) ListIdentities(_ context.Context, r *meshfedv1.ListRequest) (*meshfedv1.ListIdentitiesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var match []*meshfedv1.Identity
	for _, i := range f.identities {
		if r.GetNamespace() == "" || i.GetMeta().GetNamespace() == r.GetNamespace() {
			match = append(match, i)
		}
	}
	off := 0
	if tok := r.GetPage().GetPageToken(); tok != "" {
		off, _ = strconv.Atoi(tok)
	}
	end := min(off+2, len(match))
	resp := &meshfedv1.ListIdentitiesResponse{Identities: match[off:end], Index: 77}
	if end < len(match) {
		resp.NextPageToken = strconv.Itoa(end)
	}
	return resp, nil
}

func (f *fakeServer) DeleteIdentity(_ context.Context, r *meshfedv1.DeleteRequest) (*meshfedv1.DeleteResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.identityDels = append(f.identityDels, r)
	for n, i := range f.identities {
		if i.GetMeta().GetName() == r.GetName() && i.GetMeta().GetNamespace() == r.GetNamespace() {
			if e := r.GetExpectedVersion(); e != 0 && e != i.GetMeta().GetVersion() {
				return nil, status.Errorf(codes.FailedPrecondition, "version mismatch: stored version %d, expected %d", i.GetMeta().GetVersion(), e)
			}
			f.identities = append(f.identities[:n], f.identities[n+1:]...)
			return &meshfedv1.DeleteResponse{Index: 99}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "identity %q not found", r.GetNamespace()+"/"+r.GetName())
}

func (f *fakeServer) identityCreateCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.identityReqs)
}

func TestIdentities(t *testing.T) {
	f := startFakeServer(t)
	d := deps{getenv: f.env()}

	t.Run("empty list as JSON still has the key", func(t *testing.T) {
		r := run(t, d, "identities", "list", "-o", "json")
		r.expect(t, ExitOK)
		var doc map[string]json.RawMessage
		oneJSONDocument(t, r.stdout, &doc)
		if string(doc["identities"]) != "[]" {
			t.Errorf(`"identities" = %s, want []`, doc["identities"])
		}
	})

	r := run(t, d, "identities", "create", "payments", "-n", "shop", "--service-account", "pay", "--svid-ttl", "15m",
		"--dns-name", "payments.shop.svc", "--dns-name", "pay.example.com", "--label", "team=billing")
	r.expect(t, ExitOK)
	if r.stdout != "Created identity shop/payments: spiffe://test.mesh/ns/shop/sa/pay (version 21)\n" {
		t.Errorf("stdout %q", r.stdout)
	}
	want := &meshfedv1.CreateIdentityRequest{Identity: &meshfedv1.Identity{
		Meta:           &meshfedv1.Meta{Name: "payments", Namespace: "shop", Labels: map[string]string{"team": "billing"}},
		ServiceAccount: "pay", SvidTtl: durationpb.New(15 * time.Minute), DnsNames: []string{"payments.shop.svc", "pay.example.com"},
	}}
	if got := f.identityReqs[0]; !proto.Equal(got, want) {
		t.Errorf("request\n got %v\nwant %v", got, want)
	}

	r = run(t, d, "identities", "create", "web", "-o", "json")
	r.expect(t, ExitOK)
	var raw json.RawMessage
	oneJSONDocument(t, r.stdout, &raw)
	var created meshfedv1.Identity
	if err := protojson.Unmarshal(raw, &created); err != nil || created.GetSpiffeId() != "spiffe://test.mesh/ns/default/sa/web" || created.GetSvidTtl() != nil {
		t.Errorf("json %v, %v", &created, err)
	}
	run(t, d, "identity", "create", "db", "--spiffe-id", "spiffe://test.mesh/custom/db").expect(t, ExitOK)

	t.Run("list across pages", func(t *testing.T) {
		r := run(t, d, "identities", "list")
		r.expect(t, ExitOK)
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		if len(lines) != 4 {
			t.Fatalf("want a header and 3 rows, got:\n%s", r.stdout)
		}
		if got := strings.Fields(lines[0]); !reflect.DeepEqual(got, identityHeaders) {
			t.Errorf("header %q", got)
		}
		if got := strings.Fields(lines[1]); !reflect.DeepEqual(got, []string{"shop", "payments", "spiffe://test.mesh/ns/shop/sa/pay", "pay", "15m", "payments.shop.svc,pay.example.com", "21"}) {
			t.Errorf("row %q", got)
		}
		if got := strings.Fields(lines[2]); !reflect.DeepEqual(got, []string{"default", "web", "spiffe://test.mesh/ns/default/sa/web", "-", "-", "-", "22"}) {
			t.Errorf("row %q", got)
		}

		r = run(t, d, "identities", "list", "-n", "default", "-o", "json")
		r.expect(t, ExitOK)
		var raw json.RawMessage
		oneJSONDocument(t, r.stdout, &raw)
		var resp meshfedv1.ListIdentitiesResponse
		if err := protojson.Unmarshal(raw, &resp); err != nil || len(resp.GetIdentities()) != 2 || resp.GetIndex() != 77 {
			t.Errorf("json %v, %v", &resp, err)
		}
	})
	t.Run("get", func(t *testing.T) {
		r := run(t, d, "identities", "get", "payments", "-n", "shop", "-o", "json")
		r.expect(t, ExitOK)
		var raw json.RawMessage
		oneJSONDocument(t, r.stdout, &raw)
		var i meshfedv1.Identity
		if err := protojson.Unmarshal(raw, &i); err != nil || i.GetServiceAccount() != "pay" || len(i.GetDnsNames()) != 2 {
			t.Errorf("json %v, %v", &i, err)
		}
		r = run(t, d, "identities", "get", "web")
		r.expect(t, ExitOK)
		if !strings.Contains(r.stdout, "spiffe://test.mesh/ns/default/sa/web") {
			t.Errorf("stdout %q", r.stdout)
		}
		run(t, d, "identities", "get", "payments").expect(t, ExitError, `Error: NOT_FOUND: identity "default/payments" not found`)
	})
	t.Run("create errors from the server", func(t *testing.T) {
		run(t, d, "identities", "create", "web").expect(t, ExitError, `Error: ALREADY_EXISTS: identity "default/web" already exists`)
		run(t, d, "identities", "create", "api", "--dns-name", "a_b.example").expect(t, ExitError,
			`Error: INVALID_ARGUMENT: --dns-name: invalid identity.dns_names[0]: "a_b.example" is not a DNS name`)
	})
	t.Run("delete", func(t *testing.T) {
		run(t, d, "identities", "delete", "payments", "-n", "shop", "--expected-version", "3").expect(t, ExitError, "Error: FAILED_PRECONDITION: version mismatch")
		r := run(t, d, "identities", "delete", "payments", "-n", "shop", "--expected-version", "21")
		r.expect(t, ExitOK)
		if r.stdout != "Deleted identity shop/payments\n" {
			t.Errorf("stdout %q", r.stdout)
		}
		r = run(t, d, "identities", "delete", "web", "-o", "json")
		r.expect(t, ExitOK)
		var doc map[string]string
		oneJSONDocument(t, r.stdout, &doc)
		if doc["index"] != "99" {
			t.Errorf("json %v", doc)
		}
		if got := f.identityDels[len(f.identityDels)-1]; got.GetNamespace() != "default" || got.GetName() != "web" {
			t.Errorf("request %v", got)
		}
		run(t, d, "identities", "delete", "web").expect(t, ExitError, "Error: NOT_FOUND")
	})

	before := f.identityCreateCount()
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"identities", "create"}, "missing NAME"},
		{[]string{"identities", "create", "a", "b"}, `unexpected argument "b"`},
		{[]string{"identities", "create", "api", "--svid-ttl", "-1m"}, "--svid-ttl -1m0s: must not be negative"},
		{[]string{"identities", "create", "api", "--svid-ttl", "soon"}, `invalid argument "soon" for "--svid-ttl"`},
		{[]string{"identities", "create", "api", "--spiffe-id", "http://x/y"}, `--spiffe-id "http://x/y"`},
		{[]string{"identities", "create", "api", "--dns-name", " "}, `--dns-name " ": must not be empty`},
		{[]string{"identities", "create", "api", "--label", "novalue"}, `--label "novalue": must be key=value`},
		{[]string{"identities", "list", "extra"}, `unexpected argument "extra"`},
		{[]string{"identities", "get"}, "missing NAME"},
		{[]string{"identities", "delete"}, "missing NAME"},
		{[]string{"identities", "lsit"}, `unknown command "lsit" for "meshfed identities" (did you mean list?)`},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			run(t, d, tt.args...).expect(t, ExitUsage, tt.want)
		})
	}
	if n := f.identityCreateCount(); n != before {
		t.Errorf("%d creates sent for bad command lines", n-before)
	}
}
