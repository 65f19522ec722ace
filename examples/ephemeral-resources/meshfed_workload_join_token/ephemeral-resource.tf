# A one-use join token for a VM of the batch service account; hand it to the
# VM through a write-only argument, so that it is never stored.
ephemeral "meshfed_workload_join_token" "batch_vm" {
  spiffe_id   = "spiffe://west.mesh/ns/jobs/sa/batch"
  ttl         = "15m"
  max_uses    = 1
  description = "batch VM bootstrap"
}
