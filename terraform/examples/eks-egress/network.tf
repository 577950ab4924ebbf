# The EKS VPC (10.0.0.0/16). Per zone:
#   public    10.0.0.0/24, 10.0.1.0/24, ...    internet-facing load balancers (ALB/NLB) only
#   nat       10.0.4.0/24, 10.0.5.0/24, ...    NAT gateway (after inspection) only
#   private   10.0.16.0/20, 10.0.32.0/20, ...  EKS nodes and pods (VPC CNI)
#   database  10.0.200.0/24, 10.0.201.0/24 ... rating-database
#   endpoint  10.0.250.0/28, 10.0.250.16/28 .. GWLB endpoint (created by the gwlb-endpoints module)
#
# Pod egress:   private -> GWLB endpoint -> labelwall -> endpoint subnet -> NAT -> IGW
# Pod -> DB:    private -> GWLB endpoint -> labelwall -> endpoint subnet -> local -> database
# Returns come back through the same zone's endpoint: the NAT and database tables are the only
# ones with routes to the pod CIDRs through an endpoint.
# LB -> pod:    public -> local -> private; the reply, private -> local -> public. Neither
#   direction crosses an endpoint: the load balancers' subnets carry no return routes, which is
#   why they are not the NAT gateways' subnets (with a shared table, LB -> pod would cross the
#   endpoint and the reply would not: labelwall would see one direction only and drop it).

data "aws_availability_zones" "available" {
  # Zones come back sorted by name and only the first zone_count are used, so a new zone does
  # not move existing subnets; they are then keyed by zone ID (the same physical zone in every
  # account), which is what the inspection VPC and the endpoints are placed by.
  #checkov:skip=CKV_AWS_394:only the first zone_count sorted names are used; a new zone does not change them
  state = "available"

  filter {
    name   = "opt-in-status"
    values = ["opt-in-not-required"]
  }
}

locals {
  vpc_cidr = "10.0.0.0/16"
  zones    = { for i, id in slice(data.aws_availability_zones.available.zone_ids, 0, var.zone_count) : id => i }
  # The zone the database lives in (index 0, whatever its ID sorts as).
  first_zone = one([for id, i in local.zones : id if i == 0])

  public_cidrs   = { for az, i in local.zones : az => cidrsubnet(local.vpc_cidr, 8, i) }
  nat_cidrs      = { for az, i in local.zones : az => cidrsubnet(local.vpc_cidr, 8, 4 + i) }
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

  vpc_id               = aws_vpc.eks.id
  availability_zone_id = each.key
  cidr_block           = local.public_cidrs[each.key]

  tags = { Name = "${var.name}-public-${each.key}", "kubernetes.io/role/elb" = "1" }
}

# The NAT gateways' own subnets: nothing else lives here, because their table routes the pod
# CIDRs back through the endpoints.
resource "aws_subnet" "nat" {
  for_each = local.zones

  vpc_id               = aws_vpc.eks.id
  availability_zone_id = each.key
  cidr_block           = local.nat_cidrs[each.key]

  tags = { Name = "${var.name}-nat-${each.key}" }
}

resource "aws_subnet" "private" {
  for_each = local.zones

  vpc_id               = aws_vpc.eks.id
  availability_zone_id = each.key
  cidr_block           = local.private_cidrs[each.key]

  tags = { Name = "${var.name}-private-${each.key}", "kubernetes.io/role/internal-elb" = "1" }
}

resource "aws_subnet" "database" {
  for_each = local.zones

  vpc_id               = aws_vpc.eks.id
  availability_zone_id = each.key
  cidr_block           = local.database_cidrs[each.key]

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
  subnet_id     = aws_subnet.nat[each.key].id

  tags = { Name = "${var.name}-nat-${each.key}" }
}

# Load balancer subnets: internet via the IGW and the local route, nothing through an
# endpoint (the test eks_egress.tftest.hcl checks that no return route lands here).
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

# NAT subnets: internet via the IGW; the return routes to the pod subnets through the
# endpoints are added by the gwlb-endpoints module. One table for all zones: each pod CIDR
# returns to its own zone's endpoint whichever NAT gateway the flow left through.
resource "aws_route_table" "nat" {
  vpc_id = aws_vpc.eks.id

  tags = { Name = "${var.name}-nat" }
}

resource "aws_route" "nat_default" {
  route_table_id         = aws_route_table.nat.id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.eks.id
}

resource "aws_route_table_association" "nat" {
  for_each = aws_subnet.nat

  subnet_id      = each.value.id
  route_table_id = aws_route_table.nat.id
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
  nat_gateway_id         = aws_nat_gateway.eks[local.first_zone].id
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

  # All egress, and the database subnets (more specific than the VPC's local route). Each
  # destination names the table its replies enter: the NAT gateways' for the internet, the
  # database subnets' for the database. The load balancers' table is deliberately absent.
  inspected_destination_cidrs = concat(["0.0.0.0/0"], values(local.database_cidrs))
  nat_destination_cidrs       = ["0.0.0.0/0"]
  return_route_tables = [
    { route_table_id = aws_route_table.nat.id, for_destinations = ["0.0.0.0/0"] },
    { route_table_id = aws_route_table.database.id, for_destinations = values(local.database_cidrs) },
  ]
}
