# A peering is imported by its local name (on the dialing cluster).
terraform import meshfed_peering.west west
