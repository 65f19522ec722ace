# The CA settings are imported with the ID "global".
terraform import meshfed_ca.this global
