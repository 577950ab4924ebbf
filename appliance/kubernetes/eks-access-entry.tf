# EKS access entry for the appliances' IAM role (Terraform, AWS provider >= 5.33): the role
# becomes the Kubernetes group `labelwall-readers`, which appliance/kubernetes/rbac.yaml binds
# to get/list/watch on pods, namespaces and nodes. No access policy is associated: the
# ClusterRole is all labelwall needs (AmazonEKSViewPolicy would grant far more, and still not
# nodes).
#
# The cluster's authentication mode must include the API (`API` or `API_AND_CONFIG_MAP`).
# Apply rbac.yaml once per cluster (kubectl, or the kubernetes provider's
# kubernetes_manifest); until the binding exists the source cannot list and /readyz stays 503.

variable "eks_cluster_name" {
  description = "The watched EKS cluster."
  type        = string
}

variable "appliance_role_arn" {
  description = "IAM role of the labelwall instances (module.inspection.instance_role_arn)."
  type        = string
}

resource "aws_eks_access_entry" "labelwall" {
  cluster_name      = var.eks_cluster_name
  principal_arn     = var.appliance_role_arn
  type              = "STANDARD"
  kubernetes_groups = ["labelwall-readers"]
}
