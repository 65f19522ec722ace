resource "meshfed_identity" "payments" {
  name            = "payments"
  namespace       = "shop"
  service_account = "payments-sa"
  svid_ttl        = "15m"
  dns_names       = ["payments.shop.svc", "payments.example.com"]
}
