# Offline test of the whole scenario wiring (mocked AWS provider): pod egress and database
# traffic go through the GWLB endpoints, the appliances may read the cluster, and the VPC CNI
# leaves pod addresses untranslated so labelwall sees pods rather than nodes.

mock_provider "aws" {
  mock_data "aws_availability_zones" {
    defaults = {
      names    = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
      zone_ids = ["euw1-az3", "euw1-az1", "euw1-az2"]
    }
  }

  mock_data "aws_vpc" {
    defaults = {
      ipv6_cidr_block = ""
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

override_data {
  target = module.inspection.data.aws_availability_zones.selected
  values = {
    names    = ["eu-west-1a", "eu-west-1b"]
    zone_ids = ["euw1-az3", "euw1-az1"]
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

# --- issue 16 --------------------------------------------------------------------------------

run "three_zones_and_two_appliances_are_refused" {
  command = plan

  variables {
    zone_count      = 3
    appliance_count = 2
  }

  override_data {
    target = module.inspection.data.aws_availability_zones.selected
    values = {
      names    = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
      zone_ids = ["euw1-az3", "euw1-az1", "euw1-az2"]
    }
  }

  expect_failures = [var.appliance_count]
}

run "every_zone_gets_two_appliances_by_default" {
  command = plan

  assert {
    condition     = toset(module.inspection.availability_zone_ids) == toset(["euw1-az3", "euw1-az1"]) && local.appliance_count == 4
    error_message = "Two zones by ID and two fleet appliances per zone by default."
  }
}

# Every path the example creates is symmetric: what enters an endpoint one way comes back
# through it the other way, and what does not enter one way does not the other.
run "every_path_of_the_example_is_symmetric" {
  command = apply

  # NAT gateways sit alone in their subnets; the load balancers' subnets are others.
  assert {
    condition     = alltrue([for n in aws_nat_gateway.eks : !contains([for s in aws_subnet.public : s.id], n.subnet_id)])
    error_message = "No NAT gateway may sit in a load balancer (public) subnet: its table routes pod CIDRs through the endpoints, so LB -> pod would be inspected and pod -> LB not."
  }

  assert {
    condition     = alltrue([for id, n in aws_nat_gateway.eks : n.subnet_id == aws_subnet.nat[id].id]) && length(setintersection([for s in aws_subnet.nat : s.id], [for s in aws_subnet.public : s.id])) == 0
    error_message = "NAT gateways must be in their own subnets, not in the load balancers' public subnets."
  }

  assert {
    condition     = alltrue([for s in aws_subnet.public : s.tags["kubernetes.io/role/elb"] == "1"]) && alltrue([for s in aws_subnet.nat : !contains(keys(s.tags), "kubernetes.io/role/elb")])
    error_message = "Only the public subnets may be offered to internet-facing load balancers."
  }

  # Return routes: exactly the NAT and database tables, each with every pod CIDR to the pod
  # zone's endpoint.
  assert {
    condition     = toset(keys(module.egress_inspection.return_routes)) == toset([aws_route_table.nat.id, aws_route_table.database.id])
    error_message = "Only the NAT gateways' and the database subnets' tables may route pod CIDRs back through an endpoint."
  }

  assert {
    condition = alltrue([for rt, routes in module.egress_inspection.return_routes :
      routes == { for id, cidr in local.private_cidrs : cidr => module.egress_inspection.endpoint_ids[id] }
    ])
    error_message = "A return table must send each pod CIDR to the endpoint of the pods' zone."
  }

  # The load balancers' table crosses no endpoint in either direction.
  assert {
    condition     = !contains(keys(module.egress_inspection.return_routes), aws_route_table.public.id) && !contains(keys(module.egress_inspection.source_routes), aws_route_table.public.id)
    error_message = "The load balancers' table must have no route through an endpoint: LB -> pod would be inspected and pod -> LB not."
  }

  # Each subnet holding an inspected path's far end is associated with a return table: the
  # NAT gateways' subnets (internet) and the database subnets.
  assert {
    condition = alltrue(concat(
      [for a in aws_route_table_association.nat : contains(keys(module.egress_inspection.return_routes), a.route_table_id)],
      [for a in aws_route_table_association.database : contains(keys(module.egress_inspection.return_routes), a.route_table_id)],
      [for a in aws_route_table_association.public : !contains(keys(module.egress_inspection.return_routes), a.route_table_id)],
    ))
    error_message = "NAT and database subnets must use a return table; load balancer subnets must not."
  }

  # The pods' tables send exactly the inspected destinations to their own zone's endpoint.
  assert {
    condition = alltrue([for id, rt in aws_route_table.private :
      module.egress_inspection.source_routes[rt.id] == { for d in concat(["0.0.0.0/0"], values(local.database_cidrs)) : d => module.egress_inspection.endpoint_ids[id] }
    ])
    error_message = "Each pod table must send the internet and the database subnets to its own zone's endpoint."
  }
}

run "the_first_bundle_is_content_addressed" {
  command = apply

  assert {
    condition     = aws_s3_object.bundle_manifest.key == "labelwall/bundles/${sha256(aws_s3_object.bundle_manifest.content)}/SHA256SUMS" && aws_s3_object.bundle_file["policy.yaml"].key == "labelwall/bundles/${local.bundle_id}/policy.yaml"
    error_message = "The bundle must live under bundles/ID/ with ID the SHA-256 of its SHA256SUMS."
  }

  assert {
    condition     = strcontains(aws_s3_object.bundle_manifest.content, "${filesha256("${path.module}/../../../appliance/examples/policy.yaml")}  policy.yaml")
    error_message = "SHA256SUMS must hold the policy's hash."
  }
}
