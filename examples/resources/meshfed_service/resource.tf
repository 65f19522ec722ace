resource "meshfed_service" "payments" {
  name            = "payments"
  namespace       = "shop"
  port            = 9000
  protocol        = "grpc"
  service_account = "payments-sa"
  labels = {
    team = "billing"
  }
}
