# Two clusters, each with its own provider configuration.
provider "meshfed" {
  alias   = "west"
  address = "10.0.0.1:7700"
  ca_file = "west-ca.pem"
}

provider "meshfed" {
  alias   = "east"
  address = "10.1.0.1:7700"
  ca_file = "east-ca.pem"
}

# West (the acceptor) makes a token for the cluster named "east"...
ephemeral "meshfed_peering_token" "for_east" {
  provider = meshfed.west
  peer     = "east"
}

# ...which east (the dialer) uses once to establish the peering. The token
# is ephemeral and write-only: it is in neither the plan nor the state.
resource "meshfed_peering" "west" {
  provider         = meshfed.east
  name             = "west"
  peering_token_wo = ephemeral.meshfed_peering_token.for_east.token

  timeouts {
    create = "2m"
  }
}
