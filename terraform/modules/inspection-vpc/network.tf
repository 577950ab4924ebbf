# The inspection VPC: per zone a GWLB subnet (load balancer nodes only), an appliance subnet
# (the labelwall instances) and, with NAT gateways, a public subnet. GENEVE never leaves the
# VPC: GWLB nodes and appliances talk inside it; the NAT path only carries the appliances' own
# HTTPS (release and config from S3, STS, the EKS API server).

# Zones are given by AZ ID (euw1-az1), which names the same physical zone in every account;
# an AZ name (eu-west-1a) maps to a different zone in each account, so endpoints of another
# account placed "in eu-west-1a" could sit in a zone without appliances. Names are looked up
# here only for what needs them (CloudWatch's AvailabilityZone dimension).
data "aws_availability_zones" "selected" {
  #checkov:skip=CKV_AWS_394:filtered to exactly the zone IDs the caller lists; a new zone in the region changes nothing
  all_availability_zones = true

  filter {
    name   = "zone-id"
    values = var.availability_zone_ids
  }

  lifecycle {
    postcondition {
      condition     = length(self.zone_ids) == length(var.availability_zone_ids) && alltrue([for id in var.availability_zone_ids : contains(self.zone_ids, id)])
      error_message = "availability_zone_ids ${jsonencode(var.availability_zone_ids)}: not every ID exists in this region (found ${jsonencode(self.zone_ids)}). List zone IDs of the provider's region (aws ec2 describe-availability-zones --query 'AvailabilityZones[].ZoneId')."
    }
  }
}

locals {
  # zone ID => index, stable as long as var.availability_zone_ids keeps its order.
  zones = { for i, id in var.availability_zone_ids : id => i }
  # zone ID => this account's name for it.
  zone_names = zipmap(data.aws_availability_zones.selected.zone_ids, data.aws_availability_zones.selected.names)

  gwlb_subnet_cidrs      = { for az, i in local.zones : az => cidrsubnet(var.vpc_cidr, var.subnet_newbits, i) }
  appliance_subnet_cidrs = { for az, i in local.zones : az => cidrsubnet(var.vpc_cidr, var.subnet_newbits, 16 + i) }
  public_subnet_cidrs    = { for az, i in local.zones : az => cidrsubnet(var.vpc_cidr, var.subnet_newbits, 32 + i) }

  nat_zones = var.create_nat_gateways ? local.zones : {}
}

resource "aws_vpc" "this" {
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true

  tags = merge(var.tags, { Name = "${var.name}-inspection" })
}

# No rules: nothing may use the default security group by accident.
resource "aws_default_security_group" "this" {
  vpc_id = aws_vpc.this.id

  tags = merge(var.tags, { Name = "${var.name}-default-deny" })
}

resource "aws_flow_log" "this" {
  count = var.vpc_flow_log_destination_arn == null ? 0 : 1

  vpc_id               = aws_vpc.this.id
  traffic_type         = "ALL"
  log_destination_type = "s3"
  log_destination      = var.vpc_flow_log_destination_arn

  tags = merge(var.tags, { Name = "${var.name}-inspection" })
}

resource "aws_subnet" "gwlb" {
  for_each = local.zones

  vpc_id               = aws_vpc.this.id
  availability_zone_id = each.key
  cidr_block           = local.gwlb_subnet_cidrs[each.key]

  tags = merge(var.tags, { Name = "${var.name}-gwlb-${each.key}", "labelwall/tier" = "gwlb" })
}

resource "aws_subnet" "appliance" {
  for_each = local.zones

  vpc_id               = aws_vpc.this.id
  availability_zone_id = each.key
  cidr_block           = local.appliance_subnet_cidrs[each.key]

  tags = merge(var.tags, { Name = "${var.name}-appliance-${each.key}", "labelwall/tier" = "appliance" })
}

resource "aws_subnet" "public" {
  for_each = local.nat_zones

  vpc_id               = aws_vpc.this.id
  availability_zone_id = each.key
  cidr_block           = local.public_subnet_cidrs[each.key]

  tags = merge(var.tags, { Name = "${var.name}-public-${each.key}", "labelwall/tier" = "public" })
}

# GWLB subnets need only the local route: GWLB nodes reach the appliances inside the VPC.
resource "aws_route_table" "gwlb" {
  vpc_id = aws_vpc.this.id

  tags = merge(var.tags, { Name = "${var.name}-gwlb" })
}

resource "aws_route_table_association" "gwlb" {
  for_each = aws_subnet.gwlb

  subnet_id      = each.value.id
  route_table_id = aws_route_table.gwlb.id
}

# One route table per zone so that each zone's appliances leave through their own NAT gateway.
resource "aws_route_table" "appliance" {
  for_each = local.zones

  vpc_id = aws_vpc.this.id

  tags = merge(var.tags, { Name = "${var.name}-appliance-${each.key}" })
}

resource "aws_route_table_association" "appliance" {
  for_each = aws_subnet.appliance

  subnet_id      = each.value.id
  route_table_id = aws_route_table.appliance[each.key].id
}

resource "aws_internet_gateway" "this" {
  count = var.create_nat_gateways ? 1 : 0

  vpc_id = aws_vpc.this.id

  tags = merge(var.tags, { Name = "${var.name}-inspection" })
}

resource "aws_route_table" "public" {
  count = var.create_nat_gateways ? 1 : 0

  vpc_id = aws_vpc.this.id

  tags = merge(var.tags, { Name = "${var.name}-public" })
}

resource "aws_route" "public_default" {
  count = var.create_nat_gateways ? 1 : 0

  route_table_id         = aws_route_table.public[0].id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.this[0].id
}

resource "aws_route_table_association" "public" {
  for_each = aws_subnet.public

  subnet_id      = each.value.id
  route_table_id = aws_route_table.public[0].id
}

resource "aws_eip" "nat" {
  for_each = local.nat_zones

  domain = "vpc"

  tags = merge(var.tags, { Name = "${var.name}-nat-${each.key}" })

  depends_on = [aws_internet_gateway.this]
}

resource "aws_nat_gateway" "this" {
  for_each = local.nat_zones

  allocation_id = aws_eip.nat[each.key].id
  subnet_id     = aws_subnet.public[each.key].id

  tags = merge(var.tags, { Name = "${var.name}-nat-${each.key}" })
}

resource "aws_route" "appliance_default" {
  for_each = local.nat_zones

  route_table_id         = aws_route_table.appliance[each.key].id
  destination_cidr_block = "0.0.0.0/0"
  nat_gateway_id         = aws_nat_gateway.this[each.key].id
}

# S3 through a gateway endpoint: the release tarball and the config never cross the NAT
# gateway (no data-processing charge, and it keeps working when the NAT path is off). The
# default endpoint policy is kept: Amazon Linux's package repositories are S3 buckets too; what
# the instances may read is limited by their role.
data "aws_region" "current" {}

resource "aws_vpc_endpoint" "s3" {
  vpc_id            = aws_vpc.this.id
  service_name      = "com.amazonaws.${data.aws_region.current.name}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = [for rt in aws_route_table.appliance : rt.id]

  tags = merge(var.tags, { Name = "${var.name}-s3" })
}
