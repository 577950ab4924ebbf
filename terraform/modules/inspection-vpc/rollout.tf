# Staged policy rollout: two pointers (SSM parameters) hold the ID of the bundle each channel
# runs. A bundle (PREFIX/bundles/ID/: SHA256SUMS, policy.yaml, inventory.yaml, ID = SHA-256 of
# SHA256SUMS) is immutable, so an appliance never loads a policy and an inventory of different
# changes. appliance/bin/labelwall-rollout publishes a bundle, moves the canary pointer, watches
# the canaries for a soak period and only then moves the fleet pointer; rolling back is moving
# a pointer to the previous ID (SSM keeps every earlier value in the parameter's history).

resource "aws_ssm_parameter" "bundle" {
  # The value is a content hash of public-to-the-operator config, not a secret.
  #checkov:skip=CKV2_AWS_34:the value is a bundle ID (a SHA-256), not a secret; SecureString would only add a KMS dependency to every sync
  for_each = toset(["fleet", "canary"])

  name        = "/labelwall/${var.name}/bundle/${each.key}"
  description = "labelwall ${var.name}: ID of the policy bundle the ${each.key} appliances run (moved by labelwall-rollout)"
  type        = "String"
  value       = var.initial_bundle_id
  tier        = "Standard"

  tags = var.tags

  lifecycle {
    # labelwall-rollout owns the value after creation; an apply must never undo a rollout or a
    # rollback.
    ignore_changes = [value]
  }
}
