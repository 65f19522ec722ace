# Every service of the shop namespace, local and imported from peers.
data "meshfed_services" "shop" {
  namespace = "shop"
}

output "remote_services" {
  value = [for s in data.meshfed_services.shop.services : "${s.name}@${s.cluster}" if s.peer != null]
}
