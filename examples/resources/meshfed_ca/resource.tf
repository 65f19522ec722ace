resource "meshfed_ca" "this" {
  key_algorithm    = "ecdsa-p384"
  intermediate_ttl = "720h"
  svid_ttl         = "30m"

  # Change this value (a date, a counter) to rotate the CA: prepare,
  # activate and retire run during apply, which waits for them.
  rotation = "2026-11"

  timeouts {
    update = "30m"
  }
}
