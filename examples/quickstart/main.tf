# Two clusters, west and east, peered: east uses a token made by west.
# East runs "payments" and exports it to west; west's frontend may call it,
# with retries and failover to east. See README.md beside this file.

terraform {
  required_version = ">= 1.11"
  required_providers {
    meshfed = {
      source = "meshfed/meshfed"
    }
  }
}

provider "meshfed" {
  alias   = "west"
  address = var.west_address
  token   = var.west_token
  ca_file = var.west_ca_file
}

provider "meshfed" {
  alias   = "east"
  address = var.east_address
  token   = var.east_token
  ca_file = var.east_ca_file
}

data "meshfed_cluster" "west" {
  provider = meshfed.west
}

data "meshfed_cluster" "east" {
  provider = meshfed.east
}

# Peering: west accepts, east dials. The token is ephemeral (never stored)
# and only works for the cluster it names; after the first apply it is null
# and the peering is kept as it is.
ephemeral "meshfed_peering_token" "for_east" {
  provider = meshfed.west
  peer     = data.meshfed_cluster.east.name
}

resource "meshfed_peering" "west" {
  provider         = meshfed.east
  name             = data.meshfed_cluster.west.name
  peering_token_wo = ephemeral.meshfed_peering_token.for_east.token
}

# Services.
resource "meshfed_service" "payments" {
  provider  = meshfed.east
  name      = "payments"
  namespace = "shop"
  port      = 9000
  protocol  = "grpc"
}

resource "meshfed_workload" "payments_vm" {
  provider      = meshfed.east
  name          = "payments-vm1"
  namespace     = meshfed_service.payments.namespace
  service       = meshfed_service.payments.name
  address       = "10.1.0.15"
  port          = 15443
  version_label = "v1"
}

resource "meshfed_service" "frontend" {
  provider  = meshfed.west
  name      = "frontend"
  namespace = "shop"
  port      = 8080
  protocol  = "http"
}

# East exports payments to west.
resource "meshfed_service_export" "payments" {
  provider  = meshfed.east
  name      = meshfed_service.payments.name
  namespace = meshfed_service.payments.namespace
  peers     = [meshfed_peering.west.name]
}

# Only west's frontend may call payments (zero trust: the rest is denied).
resource "meshfed_authorization_policy" "payments" {
  provider    = meshfed.east
  name        = "frontend-calls-payments"
  namespace   = meshfed_service.payments.namespace
  destination = meshfed_service.payments.name
  action      = "allow"
  rules = [
    {
      principals = ["spiffe://${data.meshfed_cluster.west.trust_domain}/ns/shop/sa/${meshfed_service.frontend.service_account}"]
      methods    = ["POST"]
    },
  ]
}

# How west's callers reach payments: timeouts, retries, failover to east.
resource "meshfed_traffic_policy" "payments" {
  provider    = meshfed.west
  name        = "payments"
  namespace   = "shop"
  destination = "payments"
  timeouts = {
    connect = "2s"
    request = "10s"
  }
  retries = {
    attempts = 3
    retry_on = ["connect-failure", "unavailable"]
  }
  failover = [data.meshfed_cluster.east.name]
}
