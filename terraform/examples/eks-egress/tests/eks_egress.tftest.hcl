# Offline test of the whole scenario wiring (mocked AWS provider): pod egress and database
# traffic go through the GWLB endpoints, the appliances may read the cluster, and the VPC CNI
# leaves pod addresses untranslated so labelwall sees pods rather than nodes.

mock_provider "aws" {
  mock_data "aws_availability_zones" {
    defaults = {
      names = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
    }
  }

  mock_data "aws_region" {
    defaults = {
      name = "eu-west-1"
    }
  }

  mock_data "aws_partition" {
    defaults = {
      partition = "aws"
    }
  }

  mock_data "aws_caller_identity" {
    defaults = {
      account_id = "123456789012"
    }
  }

  mock_data "aws_iam_policy_document" {
    defaults = {
      json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}"
    }
  }

  mock_data "aws_ssm_parameter" {
    defaults = {
      value = "ami-0123456789abcdef0"
    }
  }

  mock_resource "aws_launch_template" {
    defaults = {
      id             = "lt-0123456789abcdef0"
      latest_version = 1
    }
  }

  mock_resource "aws_iam_role" {
    defaults = {
      arn = "arn:aws:iam::123456789012:role/labelwall-demo-lw-appliance"
    }
  }

  mock_resource "aws_iam_instance_profile" {
    defaults = {
      arn = "arn:aws:iam::123456789012:instance-profile/labelwall-demo-lw-appliance"
    }
  }

  mock_resource "aws_lb" {
    defaults = {
      arn = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/gwy/labelwall-demo-lw-gwlb/0123456789abcdef"
    }
  }

  mock_resource "aws_lb_target_group" {
    defaults = {
      arn = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/labelwall-demo-lw-geneve/0123456789abcdef"
    }
  }

  mock_resource "aws_vpc_endpoint_service" {
    defaults = {
      service_name = "com.amazonaws.vpce.eu-west-1.vpce-svc-0123456789abcdef0"
    }
  }

  mock_resource "aws_eks_cluster" {
    defaults = {
      name = "labelwall-demo"
      arn  = "arn:aws:eks:eu-west-1:123456789012:cluster/labelwall-demo"
    }
  }

  mock_resource "aws_eip" {
    defaults = {
      public_ip = "203.0.113.10"
    }
  }

  mock_resource "aws_kms_key" {
    defaults = {
      arn = "arn:aws:kms:eu-west-1:123456789012:key/00000000-0000-0000-0000-000000000000"
    }
  }

  mock_resource "aws_s3_bucket" {
    defaults = {
      arn = "arn:aws:s3:::labelwall-demo-config-123456789012"
    }
  }
}

variables {
  operator_cidrs       = ["198.51.100.0/24"]
  release_tarball_path = "tests/fixtures/labelwall-0.0.0-test-x86_64-linux.tar.gz"
}

run "pod_egress_and_database_traffic_cross_the_endpoints" {
  command = apply

  assert {
    condition = alltrue([
      for az, rt in aws_route_table.private :
      module.egress_inspection.endpoint_ids[az] != null &&
      contains(keys(module.egress_inspection.endpoint_ids), az)
    ])
    error_message = "Every pod-subnet zone must have a GWLB endpoint."
  }

  assert {
    condition     = length(module.egress_inspection.endpoint_ids) == 2
    error_message = "One endpoint per zone (zone_count = 2)."
  }

  assert {
    condition     = jsondecode(aws_eks_addon.vpc_cni.configuration_values).env.AWS_VPC_K8S_CNI_EXTERNALSNAT == "true"
    error_message = "The VPC CNI must not SNAT pod egress, or labelwall sees node addresses."
  }

  assert {
    condition     = tonumber(jsondecode(aws_eks_addon.vpc_cni.configuration_values).env.AWS_VPC_ENI_MTU) <= 8500
    error_message = "Pod MTU must fit GWLB's 8,500-byte limit: GWLB neither fragments nor sends frag-needed."
  }

  assert {
    condition     = aws_instance.rating_database[0].private_ip == "10.0.200.10"
    error_message = "The database must be at the address appliance/examples/inventory.yaml names."
  }
}

run "appliances_can_read_the_cluster" {
  command = apply

  assert {
    condition     = aws_eks_access_entry.labelwall.principal_arn == module.inspection.instance_role_arn && aws_eks_access_entry.labelwall.type == "STANDARD"
    error_message = "The appliance role needs an access entry."
  }

  # One story with appliance/kubernetes/rbac.yaml: the access entry only names the group that
  # rbac.yaml's ClusterRoleBinding binds (get/list/watch on pods, namespaces, nodes), and no
  # EKS access policy is associated (the example has no aws_eks_access_policy_association).
  assert {
    condition     = aws_eks_access_entry.labelwall.kubernetes_groups == toset(["labelwall-readers"])
    error_message = "The appliance role must be in exactly one Kubernetes group, labelwall-readers."
  }

  assert {
    condition = alltrue([
      for g in aws_eks_access_entry.labelwall.kubernetes_groups : contains(flatten([
        for d in split("\n---\n", file("${path.module}/../../../appliance/kubernetes/rbac.yaml")) : [
          for s in try(yamldecode(d).subjects, []) : s.name if s.kind == "Group"
        ] if try(yamldecode(d).kind, "") == "ClusterRoleBinding"
      ]), g)
    ])
    error_message = "The access entry's group must be the one appliance/kubernetes/rbac.yaml binds."
  }

  assert {
    condition     = contains(aws_eks_cluster.this.vpc_config[0].public_access_cidrs, "198.51.100.0/24") && !contains(aws_eks_cluster.this.vpc_config[0].public_access_cidrs, "0.0.0.0/0")
    error_message = "The EKS API must be open to the operators and the appliances only."
  }
}
