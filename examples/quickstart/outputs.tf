output "peering_state" {
  description = "State of the peering, seen from east."
  value       = meshfed_peering.west.state
}
