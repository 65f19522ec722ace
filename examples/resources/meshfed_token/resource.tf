# A read-only token, managed (description, labels, expiry, revocation) by
# Terraform. Its secret is never exposed: see the resource's documentation.
resource "meshfed_token" "dashboards" {
  kind        = "read"
  description = "Grafana dashboards"
  ttl         = "2160h"
  labels = {
    team = "observability"
  }
}
