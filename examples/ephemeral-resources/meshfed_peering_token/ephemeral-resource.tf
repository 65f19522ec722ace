# On the accepting cluster: a token for the cluster named "east". Feed it to
# meshfed_peering's write-only peering_token_wo on the east cluster. Once
# the peering is established, token is null and established is true.
ephemeral "meshfed_peering_token" "for_east" {
  peer = "east"
}
