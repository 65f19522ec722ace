#!/usr/bin/env bash
# Renders the Terraform provider's documentation into docs/ with
# tfplugindocs: docs/index.md, docs/resources/, docs/data-sources/ and
# docs/ephemeral-resources/ (tfplugindocs replaces only those; the other
# pages of docs/ are left alone). The provider's schema comes from the
# provider binary through `terraform providers schema -json`, so nothing is
# downloaded.
set -euo pipefail

GO=${GO:-go}
TFPLUGINDOCS=${TFPLUGINDOCS:?path of tfplugindocs}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

tf=$(GO="$GO" scripts/terraform.sh)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$GO" build -tags hashicorpmetrics -o "$work/bin/terraform-provider-meshfed" ./cmd/terraform-provider-meshfed
cat >"$work/terraform.rc" <<EOT
provider_installation {
  dev_overrides {
    "meshfed/meshfed" = "$work/bin"
  }
  direct {}
}
EOT
mkdir "$work/config"
cat >"$work/config/main.tf" <<'EOT'
terraform {
  required_providers {
    meshfed = {
      source = "meshfed/meshfed"
    }
  }
}
EOT
# tfplugindocs finds a provider's schema by its short name (or under
# hashicorp/), so the registry address is shortened to "meshfed".
(cd "$work/config" && TF_CLI_CONFIG_FILE="$work/terraform.rc" CHECKPOINT_DISABLE=1 "$tf" providers schema -json) |
  sed -E 's#"registry\.(terraform\.io|opentofu\.org)/meshfed/meshfed"#"meshfed"#' >"$work/schema.json"

"$TFPLUGINDOCS" generate \
  --provider-name meshfed \
  --rendered-provider-name meshfed \
  --providers-schema "$work/schema.json" \
  --examples-dir examples \
  --website-source-dir templates \
  --rendered-website-dir docs \
  --website-temp-dir "$work/website"
