package state

import meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"

const workloadsTable = "workloads"

// workloadServiceIndex finds the workloads of one service: namespace, NUL,
// service, NUL.
var workloadServiceIndex = secondaryIndex{
	name: "service",
	group: func(r Resource) (string, bool) {
		w, ok := r.(*meshfedv1.Workload)
		if !ok || w.GetService() == "" {
			return "", false
		}
		return serviceKey(w.GetMeta().GetNamespace(), w.GetService()), true
	},
}

func serviceKey(namespace, service string) string {
	return namespace + "\x00" + service + "\x00"
}
