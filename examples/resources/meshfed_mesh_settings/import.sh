# The one mesh settings object is imported with the ID "global".
terraform import meshfed_mesh_settings.this global
