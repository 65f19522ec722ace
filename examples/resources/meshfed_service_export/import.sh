# An export is imported by namespace/name of the exported service.
terraform import meshfed_service_export.payments shop/payments
