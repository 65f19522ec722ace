# A token is imported by its accessor ID (meshfed tokens list).
terraform import meshfed_token.dashboards tok-3f9c2a1b7d4e5f60
