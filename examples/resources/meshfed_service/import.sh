# A service is imported by namespace/name (or name, in the namespace "default").
terraform import meshfed_service.payments shop/payments
