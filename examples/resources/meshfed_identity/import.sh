# An identity registration is imported by namespace/name.
terraform import meshfed_identity.payments shop/payments
