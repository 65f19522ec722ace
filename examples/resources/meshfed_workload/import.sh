# A workload is imported by namespace/name.
terraform import meshfed_workload.payments_vm1 shop/payments-vm1
