# The seed scenario end to end: an EKS cluster whose pods' egress (and traffic to the database
# subnets) crosses labelwall appliances behind a Gateway Load Balancer in an inspection VPC.
# Pods labelled app=ratings may reach rating-database on tcp/3306; pods labelled app=other may
# not. docs/deploy.md walks through it.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

data "aws_ssm_parameter" "al2023" {
  name = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
}

locals {
  account_root  = "arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"
  config_bucket = "${var.name}-config-${data.aws_caller_identity.current.account_id}"
  config_s3_uri = "s3://${local.config_bucket}/labelwall"
  release_name  = basename(var.release_tarball_path)
  cluster_label = "eks-prod" # the cluster name appliance/examples/policy.yaml and inventory.yaml use

  # The first policy bundle, built the way labelwall-rollout publish builds one: SHA256SUMS
  # lists both files' hashes, and the bundle's ID is the hash of SHA256SUMS. Later bundles are
  # published with the script; Terraform never overwrites the pointers (inspection-vpc).
  bundle_files = {
    "inventory.yaml" = "${path.module}/../../../appliance/examples/inventory.yaml"
    "policy.yaml"    = "${path.module}/../../../appliance/examples/policy.yaml"
  }
  bundle_manifest = join("", [for name in sort(keys(local.bundle_files)) : "${filesha256(local.bundle_files[name])}  ${name}\n"])
  bundle_id       = sha256(local.bundle_manifest)
  appliance_count = coalesce(var.appliance_count, 2 * var.zone_count)
}

# ---------------------------------------------------------------------------------------------
# Inspection VPC with the labelwall appliances
# ---------------------------------------------------------------------------------------------

module "inspection" {
  source = "../../modules/inspection-vpc"

  name                  = "${var.name}-lw"
  tags                  = var.tags
  vpc_cidr              = "10.100.0.0/16"
  availability_zone_ids = keys(local.zones)
  instance_type         = var.appliance_instance_type
  scrape_cidrs          = var.scrape_cidrs

  # Two fleet appliances per zone (plus one canary each) unless cross-zone is on.
  min_size                  = local.appliance_count
  max_size                  = 2 * local.appliance_count
  cross_zone_load_balancing = var.cross_zone_load_balancing
  alarm_actions             = var.alarm_actions

  # The demo is meant to be destroyed again.
  deletion_protection = false

  endpoint_service_allowed_principals = [local.account_root]

  release_url    = "s3://${aws_s3_object.release.bucket}/${aws_s3_object.release.key}"
  release_sha256 = filesha256(var.release_tarball_path)
  config_s3_uri  = local.config_s3_uri
  # Taken from the uploaded manifest's key (bundles/ID/SHA256SUMS) so that the pointers, and
  # the appliances reading them, come after the bundle exists.
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

# ---------------------------------------------------------------------------------------------
# EKS cluster
# ---------------------------------------------------------------------------------------------

data "aws_iam_policy_document" "eks_assume" {
  statement {
    actions = ["sts:AssumeRole", "sts:TagSession"]

    principals {
      type        = "Service"
      identifiers = ["eks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "cluster" {
  name               = "${var.name}-eks-cluster"
  assume_role_policy = data.aws_iam_policy_document.eks_assume.json
}

resource "aws_iam_role_policy_attachment" "cluster" {
  role       = aws_iam_role.cluster.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AmazonEKSClusterPolicy"
}

# The standard key policy: the account administers its key through IAM. In a key policy,
# resource "*" means this key only.
data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_111:key policy; resource "*" is the key itself and access is delegated to the account's IAM
  #checkov:skip=CKV_AWS_109:key policy; resource "*" is the key itself and access is delegated to the account's IAM
  #checkov:skip=CKV_AWS_356:key policy; resource "*" is the key itself
  statement {
    sid       = "AccountAdministersKey"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = [local.account_root]
    }
  }
}

resource "aws_kms_key" "eks_secrets" {
  description         = "${var.name}: envelope encryption of Kubernetes secrets"
  enable_key_rotation = true
  policy              = data.aws_iam_policy_document.kms.json
}

resource "aws_eks_cluster" "this" {
  # The appliances run in the inspection VPC, which has no private path to this VPC; they
  # reach the API through its public endpoint, open only to operator_cidrs and the
  # appliances' NAT addresses. With a transit gateway between the VPCs, turn it off.
  #checkov:skip=CKV_AWS_39:public endpoint restricted to operator CIDRs and the appliances' NAT /32s; needed by the appliances in the inspection VPC
  name     = var.name
  version  = var.kubernetes_version
  role_arn = aws_iam_role.cluster.arn

  enabled_cluster_log_types = ["api", "audit", "authenticator", "controllerManager", "scheduler"]

  access_config {
    authentication_mode                         = "API"
    bootstrap_cluster_creator_admin_permissions = true
  }

  vpc_config {
    subnet_ids              = [for s in aws_subnet.private : s.id]
    endpoint_private_access = true
    # Public endpoint restricted to the operators and the appliances' NAT addresses: the
    # appliances live in another VPC and watch pods through it.
    endpoint_public_access = true
    public_access_cidrs    = concat(var.operator_cidrs, [for ip in values(module.inspection.nat_public_ips) : "${ip}/32"])
  }

  encryption_config {
    resources = ["secrets"]

    provider {
      key_arn = aws_kms_key.eks_secrets.arn
    }
  }

  depends_on = [aws_iam_role_policy_attachment.cluster]
}

# VPC CNI settings inspection depends on:
# - AWS_VPC_K8S_CNI_EXTERNALSNAT: pods keep their own address on the way out, so labelwall sees
#   pod IPs (and labels) instead of the node's address; the NAT gateway after the GWLB endpoint
#   translates afterwards.
# - AWS_VPC_ENI_MTU 8500 (pods inherit it): GWLB carries inner packets up to 8,500 bytes and
#   neither fragments nor sends "fragmentation needed", so the CNI's default 9001 black-holes
#   full-size packets.
resource "aws_eks_addon" "vpc_cni" {
  cluster_name                = aws_eks_cluster.this.name
  addon_name                  = "vpc-cni"
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "OVERWRITE"

  configuration_values = jsonencode({
    env = {
      AWS_VPC_K8S_CNI_EXTERNALSNAT = "true"
      AWS_VPC_ENI_MTU              = "8500"
    }
  })
}

data "aws_iam_policy_document" "node_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "node" {
  name               = "${var.name}-eks-node"
  assume_role_policy = data.aws_iam_policy_document.node_assume.json
}

resource "aws_iam_role_policy_attachment" "node" {
  for_each = toset(["AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy", "AmazonEC2ContainerRegistryReadOnly"])

  role       = aws_iam_role.node.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/${each.key}"
}

resource "aws_eks_node_group" "this" {
  cluster_name    = aws_eks_cluster.this.name
  node_group_name = "${var.name}-default"
  node_role_arn   = aws_iam_role.node.arn
  subnet_ids      = [for s in aws_subnet.private : s.id]
  instance_types  = [var.node_instance_type]

  scaling_config {
    min_size     = 2
    desired_size = 2
    max_size     = 3
  }

  update_config {
    max_unavailable = 1
  }

  # Nodes come up behind inspection: the CNI must already leave pod addresses untranslated,
  # and the endpoints and routes must exist, so that the first image pull is already inspected.
  depends_on = [
    aws_iam_role_policy_attachment.node,
    aws_eks_addon.vpc_cni,
    module.egress_inspection,
  ]
}

# The appliances' read-only view of the cluster: the access entry makes their role a member of
# the Kubernetes group labelwall-readers, and nothing more. appliance/kubernetes/rbac.yaml binds
# that group to get/list/watch on pods, namespaces and nodes; apply it once after this
# (docs/deploy.md, step 4): kubectl apply -f appliance/kubernetes/rbac.yaml. No EKS access policy
# is associated: AmazonEKSViewPolicy would grant far more (most namespaced resources) and
# still not nodes.
resource "aws_eks_access_entry" "labelwall" {
  cluster_name      = aws_eks_cluster.this.name
  principal_arn     = module.inspection.instance_role_arn
  type              = "STANDARD"
  kubernetes_groups = ["labelwall-readers"]
}

# ---------------------------------------------------------------------------------------------
# rating-database: MariaDB on a small instance at the address inventory.yaml names
# ---------------------------------------------------------------------------------------------

resource "aws_security_group" "database" {
  name        = "${var.name}-rating-database"
  description = "rating-database: MySQL from the pod subnets; labelwall decides which pods"
  vpc_id      = aws_vpc.eks.id
}

resource "aws_vpc_security_group_ingress_rule" "database_mysql" {
  for_each = local.private_cidrs

  security_group_id = aws_security_group.database.id
  description       = "MySQL from pods in ${each.key}"
  ip_protocol       = "tcp"
  from_port         = 3306
  to_port           = 3306
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "database_https" {
  security_group_id = aws_security_group.database.id
  description       = "Package repositories"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_instance" "rating_database" {
  # A stand-in database: it calls no AWS API, so it gets no instance role at all.
  #checkov:skip=CKV2_AWS_41:the test database needs no AWS permissions; no role is the least privilege
  count = var.create_test_database ? 1 : 0

  ami                    = nonsensitive(data.aws_ssm_parameter.al2023.value)
  instance_type          = "t3.micro"
  subnet_id              = aws_subnet.database[local.first_zone].id
  private_ip             = cidrhost(local.database_cidrs[local.first_zone], 10)
  vpc_security_group_ids = [aws_security_group.database.id]
  monitoring             = true
  ebs_optimized          = true

  metadata_options {
    http_endpoint = "enabled"
    http_tokens   = "required"
  }

  root_block_device {
    encrypted   = true
    volume_type = "gp3"
  }

  user_data = <<-EOT
    #!/bin/bash
    set -euo pipefail
    dnf -y install mariadb105-server
    printf '[mysqld]\nbind-address=0.0.0.0\n' > /etc/my.cnf.d/labelwall-demo.cnf
    systemctl enable --now mariadb
    mysql -e "CREATE DATABASE IF NOT EXISTS ratings"
  EOT

  tags = { Name = "${var.name}-rating-database" }

  depends_on = [aws_route.database_default]
}
