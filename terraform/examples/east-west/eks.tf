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
  # The appliances reach the API through its public endpoint, open only to operator_cidrs and
  # the appliances' NAT addresses. The private endpoint is reachable over the transit gateway
  # too, but only through the inspection VPC's endpoints: the appliances' own requests would
  # leave uninspected and their replies come back inspected, half a flow.
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
    subnet_ids              = [for s in aws_subnet.eks_private : s.id]
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
# - AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS: pods keep their own address toward the database VPC,
#   so labelwall sees pod IPs (and labels) instead of the node's address. Internet egress is
#   still SNATed to the node (it leaves through the EKS VPC's NAT gateway, uninspected).
# - AWS_VPC_ENI_MTU 8500 (pods inherit it): GWLB and the transit gateway carry packets up to
#   8,500 bytes and neither fragments nor sends "fragmentation needed".
resource "aws_eks_addon" "vpc_cni" {
  cluster_name                = aws_eks_cluster.this.name
  addon_name                  = "vpc-cni"
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "OVERWRITE"

  configuration_values = jsonencode({
    env = {
      AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS = local.database_cidr
      AWS_VPC_ENI_MTU                    = "8500"
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
  subnet_ids      = [for s in aws_subnet.eks_private : s.id]
  instance_types  = [var.node_instance_type]

  scaling_config {
    min_size     = 2
    desired_size = 2
    max_size     = 3
  }

  update_config {
    max_unavailable = 1
  }

  # Pods must leave untranslated toward the database VPC from the first one on.
  depends_on = [
    aws_iam_role_policy_attachment.node,
    aws_eks_addon.vpc_cni,
  ]
}

# The appliances' read-only view of the cluster: the access entry makes their role a member of
# the Kubernetes group labelwall-readers, and nothing more. appliance/kubernetes/rbac.yaml binds
# that group to get/list/watch on pods, namespaces and nodes; apply it once after this
# (docs/deploy.md): kubectl apply -f appliance/kubernetes/rbac.yaml. No EKS access policy
# is associated: AmazonEKSViewPolicy would grant far more (most namespaced resources) and
# still not nodes.
resource "aws_eks_access_entry" "labelwall" {
  cluster_name      = aws_eks_cluster.this.name
  principal_arn     = module.inspection.instance_role_arn
  type              = "STANDARD"
  kubernetes_groups = ["labelwall-readers"]
}

