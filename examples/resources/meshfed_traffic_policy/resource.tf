resource "meshfed_traffic_policy" "payments" {
  name        = "payments"
  namespace   = "shop"
  destination = "payments"

  timeouts = {
    connect = "2s"
    request = "10s"
  }
  retries = {
    attempts        = 3
    per_try_timeout = "3s"
    retry_on        = ["connect-failure", "unavailable"]
  }
  circuit_breaker = {
    max_connections      = 1000
    consecutive_errors   = 5
    base_ejection_time   = "30s"
    max_ejection_percent = 50
  }
  load_balancer = "least-request"

  # Canary: 10% of the calls go to workloads labelled v2.
  splits = [
    { version = "v1", weight = 90 },
    { version = "v2", weight = 10 },
  ]

  # When no local endpoint is healthy, use the east cluster's.
  failover = ["east"]
}
