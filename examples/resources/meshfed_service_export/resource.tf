# Make payments visible to the clusters peered as "east" and "north".
resource "meshfed_service_export" "payments" {
  name      = "payments"
  namespace = "shop"
  peers     = ["east", "north"]
}
