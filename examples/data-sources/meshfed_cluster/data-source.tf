data "meshfed_cluster" "this" {}

output "trust_domain" {
  value = data.meshfed_cluster.this.trust_domain
}
