# Let the frontend (and any workload of the east cluster's shop namespace)
# read payments; everything else is denied by the zero-trust default.
resource "meshfed_authorization_policy" "payments_readers" {
  name        = "payments-readers"
  namespace   = "shop"
  destination = "payments"
  action      = "allow"
  rules = [
    {
      principals = [
        "spiffe://west.mesh/ns/shop/sa/frontend",
        "spiffe://east.mesh/ns/shop/*",
      ]
      methods = ["GET"]
      paths   = ["/api/v1/*"]
    },
  ]
}
