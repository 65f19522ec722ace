package state

import (
	"google.golang.org/protobuf/proto"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// shareWorkloadFields makes w reuse the strings and locality of a stored
// workload of the same service where they are equal. Workloads of a service
// repeat their namespace, service, SPIFFE ID, version and locality, and the
// decoder allocates each afresh; sharing them (stored objects are immutable)
// saves about a fifth of a workload's memory, with no table of its own.
func (t *Txn) shareWorkloadFields(w *meshfedv1.Workload, existing Resource) {
	sibling, _ := existing.(*meshfedv1.Workload)
	if sibling == nil && w.GetService() != "" {
		raw, err := t.tx.First(workloadsTable, workloadServiceIndex.name, serviceKey(w.GetMeta().GetNamespace(), w.GetService()))
		if err != nil || raw == nil {
			return
		}
		sibling = raw.(*meshfedv1.Workload)
	}
	if sibling == nil {
		return
	}
	share(&w.Meta.Namespace, sibling.GetMeta().GetNamespace())
	share(&w.Service, sibling.GetService())
	share(&w.SpiffeId, sibling.GetSpiffeId())
	share(&w.Version, sibling.GetVersion())
	if w.Locality != nil && sibling.Locality != nil && proto.Equal(w.Locality, sibling.Locality) {
		w.Locality = sibling.Locality
	}
}

// share points *dst at src's bytes when they are equal.
func share(dst *string, src string) {
	if *dst == src {
		*dst = src
	}
}
