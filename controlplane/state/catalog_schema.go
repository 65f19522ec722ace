package state

const workloadsTable = "workloads"

// The workloads of each service are listed by a serviceGroups, kept in the
// workloads row of the index table (which changes exactly when workloads
// do), not by a memdb index over the workloads table. A memdb index entry
// costs each workload about 450 bytes (a radix leaf and node, each with its
// watch channel, plus the inner nodes and the key), a third of all it
// costs, and each write several radix node copies; the groups cost a
// workload 24 to 48 bytes, a write a copy of a few B+ tree nodes. Nobody
// watches a service's workloads through memdb channels: List watches the
// kind's index row.
