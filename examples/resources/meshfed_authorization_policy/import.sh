# A policy is imported by namespace/name.
terraform import meshfed_authorization_policy.payments_readers shop/payments-readers
