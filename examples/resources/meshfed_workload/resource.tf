# A VM that serves the "payments" service, registered as a static endpoint.
resource "meshfed_workload" "payments_vm1" {
  name          = "payments-vm1"
  namespace     = "shop"
  service       = "payments"
  address       = "10.20.0.15"
  port          = 15443
  version_label = "v1"
  locality = {
    region = "eu-west"
    zone   = "eu-west-1a"
  }
}
