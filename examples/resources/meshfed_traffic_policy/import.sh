# A policy is imported by namespace/name.
terraform import meshfed_traffic_policy.payments shop/payments
