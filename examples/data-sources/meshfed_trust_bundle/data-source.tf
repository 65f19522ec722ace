data "meshfed_trust_bundle" "this" {}

# The bundle clients verify the servers with, e.g. for a second provider.
resource "local_file" "ca" {
  filename = "${path.module}/ca.pem"
  content  = data.meshfed_trust_bundle.this.bundle_pem
}
