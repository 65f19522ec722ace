package state

// workloadsTable names the workloads' row in the index table. Unlike the
// other kinds, workloads are not stored in memdb: the memdb table of that
// name stays empty.
//
// Workloads are most of a catalog (a hundred thousand in a large mesh), so
// they are kept in a workloadSet (catalog.go) in the workloads row of the
// index table, which changes exactly when workloads do: B+ trees of them
// by name, one per namespace and one per service. A memdb id index entry
// cost each workload about 350 bytes (a radix leaf and node, each with its
// watch channel, plus the inner nodes and the key), as much as the
// workload itself, and each write several radix node copies; the B+ trees
// cost a workload about 80 bytes, and a write a copy of a few nodes, once
// per transaction.
//
// What this gives up is memdb's watch channel per object: a read of one
// workload watches all of them (the row), so it wakes on a change to any
// workload. Nobody watches single workloads; lists watch the row anyway.
const workloadsTable = "workloads"
