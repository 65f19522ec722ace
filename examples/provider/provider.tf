terraform {
  required_providers {
    meshfed = {
      source = "meshfed/meshfed"
    }
  }
}

# Connection settings may also come from MESHFED_ADDR, MESHFED_TOKEN and
# MESHFED_CA_FILE (the `env` file a bootstrapped server writes).
provider "meshfed" {
  address = "10.0.0.1:7700"
  token   = var.meshfed_token
  ca_file = "${path.module}/ca.pem"
}

variable "meshfed_token" {
  type      = string
  sensitive = true
}
