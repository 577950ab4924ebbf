# Offline test of the east-west scenario (mocked AWS provider): the transit gateway sends every
# flow between the EKS and database VPCs through the inspection VPC, both directions, in one
# zone (appliance mode), and nothing routes around it; the origin's policy is what the
# appliances load first.

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
      arn = "arn:aws:iam::123456789012:role/labelwall-ew-lw-appliance"
    }
  }

  mock_resource "aws_iam_instance_profile" {
    defaults = {
      arn = "arn:aws:iam::123456789012:instance-profile/labelwall-ew-lw-appliance"
    }
  }

  mock_resource "aws_lb" {
    defaults = {
      arn = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/gwy/labelwall-ew-lw-gwlb/0123456789abcdef"
    }
  }

  mock_resource "aws_lb_target_group" {
    defaults = {
      arn = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/labelwall-ew-lw-geneve/0123456789abcdef"
    }
  }

  mock_resource "aws_vpc_endpoint_service" {
    defaults = {
      service_name = "com.amazonaws.vpce.eu-west-1.vpce-svc-0123456789abcdef0"
    }
  }

  mock_resource "aws_eks_cluster" {
    defaults = {
      name = "labelwall-ew"
      arn  = "arn:aws:eks:eu-west-1:123456789012:cluster/labelwall-ew"
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
      arn = "arn:aws:s3:::labelwall-ew-config-123456789012"
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

run "the_inspection_attachment_is_in_appliance_mode_and_no_default_table_exists" {
  command = apply

  assert {
    condition     = aws_ec2_transit_gateway_vpc_attachment.inspection.appliance_mode_support == "enable"
    error_message = "The inspection VPC's attachment must be in appliance mode: both directions of a flow in one zone, through one endpoint."
  }

  assert {
    condition     = aws_ec2_transit_gateway.this.default_route_table_association == "disable" && aws_ec2_transit_gateway.this.default_route_table_propagation == "disable"
    error_message = "The transit gateway must have no default route table: nothing may route around inspection."
  }

  assert {
    condition = alltrue([for a in [aws_ec2_transit_gateway_vpc_attachment.eks, aws_ec2_transit_gateway_vpc_attachment.database, aws_ec2_transit_gateway_vpc_attachment.inspection] :
    a.transit_gateway_default_route_table_association == false && a.transit_gateway_default_route_table_propagation == false])
    error_message = "No attachment may use the default route table."
  }

  assert {
    condition     = length(aws_ec2_transit_gateway_vpc_attachment.inspection.subnet_ids) == 2 && aws_ec2_transit_gateway_vpc_attachment.inspection.subnet_ids == toset([for s in aws_subnet.inspection_tgw : s.id])
    error_message = "The inspection attachment must have one subnet in every zone the appliances are in."
  }
}

run "the_transit_gateway_sends_spoke_to_spoke_through_inspection_in_both_directions" {
  command = apply

  # Spokes' table: associated with both spokes, every spoke CIDR to the inspection attachment.
  assert {
    condition     = toset([for a in aws_ec2_transit_gateway_route_table_association.spokes : a.transit_gateway_attachment_id]) == toset([aws_ec2_transit_gateway_vpc_attachment.eks.id, aws_ec2_transit_gateway_vpc_attachment.database.id]) && alltrue([for a in aws_ec2_transit_gateway_route_table_association.spokes : a.transit_gateway_route_table_id == aws_ec2_transit_gateway_route_table.spokes.id])
    error_message = "Both spokes must use the spokes' table."
  }

  assert {
    condition     = { for r in aws_ec2_transit_gateway_route.spokes_to_inspection : r.destination_cidr_block => r.transit_gateway_attachment_id if r.transit_gateway_route_table_id == aws_ec2_transit_gateway_route_table.spokes.id } == { "10.0.0.0/16" = aws_ec2_transit_gateway_vpc_attachment.inspection.id, "10.20.0.0/16" = aws_ec2_transit_gateway_vpc_attachment.inspection.id }
    error_message = "The spokes' table must send both spoke CIDRs, and only them, to the inspection attachment (never straight to the other spoke)."
  }

  # Inspection table: inspected traffic on to the spoke that owns the address.
  assert {
    condition     = aws_ec2_transit_gateway_route_table_association.inspection.transit_gateway_attachment_id == aws_ec2_transit_gateway_vpc_attachment.inspection.id && aws_ec2_transit_gateway_route_table_association.inspection.transit_gateway_route_table_id == aws_ec2_transit_gateway_route_table.inspection.id
    error_message = "The inspection attachment must use the inspection table."
  }

  assert {
    condition     = { for r in aws_ec2_transit_gateway_route.inspection_to_spokes : r.destination_cidr_block => r.transit_gateway_attachment_id if r.transit_gateway_route_table_id == aws_ec2_transit_gateway_route_table.inspection.id } == { "10.0.0.0/16" = aws_ec2_transit_gateway_vpc_attachment.eks.id, "10.20.0.0/16" = aws_ec2_transit_gateway_vpc_attachment.database.id }
    error_message = "The inspection table must send each spoke CIDR to its own spoke."
  }

  # In the inspection VPC: each zone's TGW subnet -> that zone's endpoint, for both spokes.
  assert {
    condition = alltrue([for id, rt in aws_route_table.inspection_tgw :
      module.east_west_inspection.source_routes[rt.id] == { "10.0.0.0/16" = module.east_west_inspection.endpoint_ids[id], "10.20.0.0/16" = module.east_west_inspection.endpoint_ids[id] }
    ])
    error_message = "Each zone's transit gateway subnet must send both spoke CIDRs to its own zone's endpoint (the reply of a flow to one spoke is traffic to the other)."
  }

  # After inspection: each zone's endpoint subnet -> the transit gateway, for both spokes.
  assert {
    condition = alltrue([for id in keys(local.zones) :
      module.east_west_inspection.post_inspection_routes[id] == { "10.0.0.0/16" = aws_ec2_transit_gateway.this.id, "10.20.0.0/16" = aws_ec2_transit_gateway.this.id }
    ])
    error_message = "Each endpoint subnet must send both spoke CIDRs back to the transit gateway."
  }

  assert {
    condition     = length(module.east_west_inspection.return_routes) == 0
    error_message = "In this pattern replies arrive in the transit gateway subnets themselves: no other table may route to the endpoints."
  }

  # The spokes reach each other only through the transit gateway.
  assert {
    condition     = alltrue([for r in aws_route.eks_private_to_database : r.destination_cidr_block == "10.20.0.0/16" && r.transit_gateway_id == aws_ec2_transit_gateway.this.id]) && length(aws_route.eks_private_to_database) == 2
    error_message = "Every EKS pod table must send the database VPC to the transit gateway."
  }

  assert {
    condition     = aws_route.database_to_eks.destination_cidr_block == "10.0.0.0/16" && aws_route.database_to_eks.transit_gateway_id == aws_ec2_transit_gateway.this.id && aws_route.database_to_eks.route_table_id == aws_route_table.database.id
    error_message = "The database subnets must send the EKS VPC to the transit gateway (the reply path)."
  }

  assert {
    condition     = alltrue([for a in aws_route_table_association.database : a.route_table_id == aws_route_table.database.id])
    error_message = "Every database subnet must use the table with the route back to the EKS VPC."
  }
}

run "the_origins_policy_is_the_first_bundle" {
  command = apply

  assert {
    condition = anytrue([for r in yamldecode(file("${path.module}/../../../appliance/examples/east-west/policy.yaml")).rules :
    r.name == "ratings-to-db" && r.from == ["ratings"] && r.to == ["rating-database"] && try(r.ports, []) == ["tcp/3306"] && r.action == "allow"])
    error_message = "Only ratings pods may reach the database on tcp/3306."
  }

  assert {
    condition     = aws_s3_object.bundle_file["policy.yaml"].source == "./../../../appliance/examples/east-west/policy.yaml" && aws_s3_object.bundle_manifest.key == "labelwall/bundles/${local.bundle_id}/SHA256SUMS"
    error_message = "The first bundle must be the east-west policy and inventory."
  }

  assert {
    condition     = aws_instance.rating_database[0].private_ip == "10.20.0.10" && contains([for e in yamldecode(file("${path.module}/../../../appliance/examples/east-west/inventory.yaml")).endpoints : e.ip], "10.20.0.10")
    error_message = "The database must be at the address the inventory names."
  }

  assert {
    condition     = jsondecode(aws_eks_addon.vpc_cni.configuration_values).env.AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS == "10.20.0.0/16"
    error_message = "Pods must keep their addresses toward the database VPC, or labelwall sees nodes."
  }
}

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
