# The scenario labelwall comes from, east-west: EKS pods in one VPC reach rating-database in
# another VPC through a transit gateway, and the transit gateway sends every flow between the
# two VPCs, both directions, through GWLB endpoints in the inspection VPC (appliance mode on the
# inspection attachment keeps both directions of a flow in one zone, so they cross the same
# endpoint and the same appliance). Pods labelled app=ratings may reach the database on
# tcp/3306; nothing else may. docs/deploy.md walks through it; network.tf has the paths.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

data "aws_ssm_parameter" "al2023" {
  name = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
}

locals {
  account_root    = "arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"
  config_bucket   = "${var.name}-config-${data.aws_caller_identity.current.account_id}"
  config_s3_uri   = "s3://${local.config_bucket}/labelwall"
  release_name    = basename(var.release_tarball_path)
  cluster_label   = "eks-prod" # the cluster name appliance/examples/east-west/*.yaml use
  appliance_count = coalesce(var.appliance_count, 2 * var.zone_count)

  # The first policy bundle, built as labelwall-rollout publish builds one (see eks-egress).
  bundle_files = {
    "inventory.yaml" = "${path.module}/../../../appliance/examples/east-west/inventory.yaml"
    "policy.yaml"    = "${path.module}/../../../appliance/examples/east-west/policy.yaml"
  }
  bundle_manifest = join("", [for name in sort(keys(local.bundle_files)) : "${filesha256(local.bundle_files[name])}  ${name}\n"])
  bundle_id       = sha256(local.bundle_manifest)
}

# ---------------------------------------------------------------------------------------------
# Inspection VPC with the labelwall appliances
# ---------------------------------------------------------------------------------------------

module "inspection" {
  source = "../../modules/inspection-vpc"

  name                  = "${var.name}-lw"
  tags                  = var.tags
  vpc_cidr              = local.inspection_cidr
  availability_zone_ids = keys(local.zones)
  instance_type         = var.appliance_instance_type
  scrape_cidrs          = var.scrape_cidrs

  min_size                  = local.appliance_count
  max_size                  = 2 * local.appliance_count
  cross_zone_load_balancing = var.cross_zone_load_balancing
  alarm_actions             = var.alarm_actions

  # The demo is meant to be destroyed again.
  deletion_protection = false

  endpoint_service_allowed_principals = [local.account_root]

  release_url       = "s3://${aws_s3_object.release.bucket}/${aws_s3_object.release.key}"
  release_sha256    = filesha256(var.release_tarball_path)
  config_s3_uri     = local.config_s3_uri
  initial_bundle_id = split("/", aws_s3_object.bundle_manifest.key)[2]

  kubernetes_clusters = [
    { cluster = local.cluster_label, eks_cluster_name = aws_eks_cluster.this.name },
  ]
}

# ---------------------------------------------------------------------------------------------
# Config bucket: release tarball, policy.yaml, inventory.yaml
# ---------------------------------------------------------------------------------------------

resource "aws_s3_bucket" "config" {
  # Holds the release tarball and the policy; nothing secret, read by one role.
  #checkov:skip=CKV_AWS_18:demo bucket; enable server access logging to your log bucket in production
  #checkov:skip=CKV_AWS_144:cross-region replication is not needed: Terraform recreates the content from the repository
  #checkov:skip=CKV_AWS_145:SSE-S3 suffices for policy and release; the inspection module supports SSE-KMS via config_kms_key_arn
  #checkov:skip=CKV2_AWS_62:no consumer for event notifications; appliances poll on a timer
  bucket        = local.config_bucket
  force_destroy = true
}

resource "aws_s3_bucket_public_access_block" "config" {
  bucket                  = aws_s3_bucket.config.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "config" {
  bucket = aws_s3_bucket.config.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "config" {
  bucket = aws_s3_bucket.config.id

  rule {
    id     = "expire-old-versions"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = 90
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

resource "aws_s3_bucket_versioning" "config" {
  bucket = aws_s3_bucket.config.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "config" {
  bucket = aws_s3_bucket.config.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

data "aws_iam_policy_document" "config_bucket" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.config.arn, "${aws_s3_bucket.config.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "config" {
  bucket = aws_s3_bucket.config.id
  policy = data.aws_iam_policy_document.config_bucket.json

  depends_on = [aws_s3_bucket_public_access_block.config]
}

resource "aws_s3_object" "release" {
  bucket      = aws_s3_bucket.config.id
  key         = "releases/${local.release_name}"
  source      = var.release_tarball_path
  source_hash = filemd5(var.release_tarball_path)
}

# The first bundle: immutable objects under bundles/ID/ (see local.bundle_id).
resource "aws_s3_object" "bundle_manifest" {
  bucket       = aws_s3_bucket.config.id
  key          = "labelwall/bundles/${local.bundle_id}/SHA256SUMS"
  content      = local.bundle_manifest
  content_type = "text/plain"

  # The manifest last, as labelwall-rollout publishes: a bundle whose manifest exists is whole.
  depends_on = [aws_s3_object.bundle_file]
}

resource "aws_s3_object" "bundle_file" {
  for_each = local.bundle_files

  bucket       = aws_s3_bucket.config.id
  key          = "labelwall/bundles/${local.bundle_id}/${each.key}"
  source       = each.value
  source_hash  = filemd5(each.value)
  content_type = "application/yaml"
}

