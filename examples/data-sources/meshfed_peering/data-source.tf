# The acceptor's view of a peering another cluster established.
data "meshfed_peering" "east" {
  name = "east"
}

output "east_link" {
  value = data.meshfed_peering.east.state
}
