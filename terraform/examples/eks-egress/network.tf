# The EKS VPC (10.0.0.0/16). Per zone:
#   public    10.0.0.0/24, 10.0.1.0/24, ...    NAT gateway (after inspection)
#   private   10.0.16.0/20, 10.0.32.0/20, ...  EKS nodes and pods (VPC CNI)
#   database  10.0.200.0/24, 10.0.201.0/24 ... rating-database
#   endpoint  10.0.250.0/28, 10.0.250.16/28 .. GWLB endpoint (created by the gwlb-endpoints module)
#
# Pod egress:   private -> GWLB endpoint -> labelwall -> endpoint subnet -> NAT -> IGW
# Pod -> DB:    private -> GWLB endpoint -> labelwall -> endpoint subnet -> local -> database
# Returns come back through the same zone's endpoint (routes in the public and database tables).

data "aws_availability_zones" "available" {
  # Zone names come back sorted and only the first zone_count are used, so a new zone does not
  # move existing subnets; pin explicit zones instead if your organisation requires it.
  #checkov:skip=CKV_AWS_394:only the first zone_count sorted names are used; a new zone does not change them
  state = "available"

  filter {
    name   = "opt-in-status"
    values = ["opt-in-not-required"]
  }
}

locals {
  vpc_cidr = "10.0.0.0/16"
  zones    = { for i, az in slice(data.aws_availability_zones.available.names, 0, var.zone_count) : az => i }

  public_cidrs   = { for az, i in local.zones : az => cidrsubnet(local.vpc_cidr, 8, i) }
  private_cidrs  = { for az, i in local.zones : az => cidrsubnet(local.vpc_cidr, 4, 1 + i) }
  database_cidrs = { for az, i in local.zones : az => cidrsubnet(local.vpc_cidr, 8, 200 + i) }
  endpoint_cidrs = { for az, i in local.zones : az => cidrsubnet(local.vpc_cidr, 12, 4000 + i) }
}

resource "aws_vpc" "eks" {
  # Demo VPC; in production enable flow logs on the workload VPC (the inspection module has
  # vpc_flow_log_destination_arn for its own VPC).
  #checkov:skip=CKV2_AWS_11:demo workload VPC; labelwall's flow log records every inspected flow
  cidr_block           = local.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true

  tags = { Name = "${var.name}-eks" }
}

resource "aws_default_security_group" "eks" {
  vpc_id = aws_vpc.eks.id

  tags = { Name = "${var.name}-default-deny" }
}

resource "aws_internet_gateway" "eks" {
  vpc_id = aws_vpc.eks.id

  tags = { Name = "${var.name}-eks" }
}

resource "aws_subnet" "public" {
  for_each = local.zones

  vpc_id            = aws_vpc.eks.id
  availability_zone = each.key
  cidr_block        = local.public_cidrs[each.key]

  tags = { Name = "${var.name}-public-${each.key}", "kubernetes.io/role/elb" = "1" }
}

resource "aws_subnet" "private" {
  for_each = local.zones

  vpc_id            = aws_vpc.eks.id
  availability_zone = each.key
  cidr_block        = local.private_cidrs[each.key]

  tags = { Name = "${var.name}-private-${each.key}", "kubernetes.io/role/internal-elb" = "1" }
}

resource "aws_subnet" "database" {
  for_each = local.zones

  vpc_id            = aws_vpc.eks.id
  availability_zone = each.key
  cidr_block        = local.database_cidrs[each.key]

  tags = { Name = "${var.name}-database-${each.key}" }
}

resource "aws_eip" "nat" {
  for_each = local.zones

  domain = "vpc"

  tags = { Name = "${var.name}-nat-${each.key}" }

  depends_on = [aws_internet_gateway.eks]
}

resource "aws_nat_gateway" "eks" {
  for_each = local.zones

  allocation_id = aws_eip.nat[each.key].id
  subnet_id     = aws_subnet.public[each.key].id

  tags = { Name = "${var.name}-nat-${each.key}" }
}

# Public subnets: internet via the IGW; return routes to the pod subnets through the
# endpoints are added by the gwlb-endpoints module.
resource "aws_route_table" "public" {
  vpc_id = aws_vpc.eks.id

  tags = { Name = "${var.name}-public" }
}

resource "aws_route" "public_default" {
  route_table_id         = aws_route_table.public.id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.eks.id
}

resource "aws_route_table_association" "public" {
  for_each = aws_subnet.public

  subnet_id      = each.value.id
  route_table_id = aws_route_table.public.id
}

# Private (node and pod) subnets: one table per zone; their default route and the route to the
# database subnets point at the zone's GWLB endpoint (added by the gwlb-endpoints module).
resource "aws_route_table" "private" {
  for_each = local.zones

  vpc_id = aws_vpc.eks.id

  tags = { Name = "${var.name}-private-${each.key}" }
}

resource "aws_route_table_association" "private" {
  for_each = aws_subnet.private

  subnet_id      = each.value.id
  route_table_id = aws_route_table.private[each.key].id
}

# Database subnets: their own egress (package installs) leaves through the first zone's NAT
# gateway uninspected; replies to pods go back through the pods' endpoint (module routes).
resource "aws_route_table" "database" {
  vpc_id = aws_vpc.eks.id

  tags = { Name = "${var.name}-database" }
}

resource "aws_route" "database_default" {
  route_table_id         = aws_route_table.database.id
  destination_cidr_block = "0.0.0.0/0"
  nat_gateway_id         = aws_nat_gateway.eks[keys(local.zones)[0]].id
}

resource "aws_route_table_association" "database" {
  for_each = aws_subnet.database

  subnet_id      = each.value.id
  route_table_id = aws_route_table.database.id
}

module "egress_inspection" {
  source = "../../modules/gwlb-endpoints"

  name         = var.name
  tags         = var.tags
  vpc_id       = aws_vpc.eks.id
  service_name = module.inspection.endpoint_service_name

  zones = {
    for az in keys(local.zones) : az => {
      endpoint_subnet_cidr   = local.endpoint_cidrs[az]
      source_cidrs           = [local.private_cidrs[az]]
      source_route_table_ids = [aws_route_table.private[az].id]
      nat_gateway_id         = aws_nat_gateway.eks[az].id
    }
  }

  # All egress, and the database subnets (more specific than the VPC's local route).
  inspected_destination_cidrs = concat(["0.0.0.0/0"], values(local.database_cidrs))
  nat_destination_cidrs       = ["0.0.0.0/0"]
  return_route_table_ids      = [aws_route_table.public.id, aws_route_table.database.id]
}
