resource "meshfed_mesh_settings" "this" {
  default_authorization_action = "deny"
  mtls_mode                    = "strict" # "permissive" while some callers have no proxy yet
  access_logs                  = true
  trace_sampling               = 0.05
  otlp_endpoint                = "otel-collector.monitoring:4317"

  locality = {
    region = "eu-west"
  }

  default_traffic_policy = {
    timeouts = {
      request = "15s"
    }
    retries = {
      attempts = 2
      retry_on = ["connect-failure"]
    }
  }
}
