# Three VPCs and a transit gateway. Per zone:
#
#   EKS VPC 10.0.0.0/16          public 10.0.0.0/24+      NAT gateway, IGW (the nodes' own egress)
#                                private 10.0.16.0/20+    nodes and pods
#                                tgw 10.0.250.0/28+       transit gateway attachment
#   database VPC 10.20.0.0/16    database 10.20.0.0/24+   rating-database
#                                tgw 10.20.250.0/28+      transit gateway attachment
#   inspection VPC 10.100.0.0/16 (module) GWLB, appliances, the appliances' NAT path, plus here:
#                                tgw 10.100.64.0/24+      transit gateway attachment (appliance mode)
#                                endpoint 10.100.80.0/28+ GWLB endpoint (gwlb-endpoints module)
#
# Pod -> database, and the reply the same way reversed:
#   private (10.20.0.0/16 -> TGW) -> TGW spokes table (10.20.0.0/16 -> inspection attachment)
#   -> inspection tgw subnet of the zone TGW picked (10.20.0.0/16 -> that zone's endpoint)
#   -> labelwall -> endpoint subnet (10.20.0.0/16 -> TGW) -> TGW inspection table
#   (10.20.0.0/16 -> database attachment) -> database subnet
#   database (10.0.0.0/16 -> TGW) -> spokes table (10.0.0.0/16 -> inspection attachment) -> the
#   same zone (appliance mode: TGW keeps a flow's two directions on one attachment ENI) -> the
#   same endpoint -> labelwall -> endpoint subnet (10.0.0.0/16 -> TGW) -> inspection table
#   (10.0.0.0/16 -> EKS attachment) -> the pod.
# The spokes' tables send only each other's CIDR to the transit gateway; the nodes' internet
# egress leaves through the EKS VPC's own NAT gateway, uninspected in both directions (inspect
# it as terraform/examples/eks-egress does, with endpoints in the EKS VPC).

data "aws_availability_zones" "available" {
  # Zones sorted by name, the first zone_count used, keyed by zone ID (the same physical zone
  # in every account: the database VPC could live in another account unchanged).
  #checkov:skip=CKV_AWS_394:only the first zone_count sorted zones are used; a new zone does not change them
  state = "available"

  filter {
    name   = "opt-in-status"
    values = ["opt-in-not-required"]
  }
}

locals {
  eks_cidr        = "10.0.0.0/16"
  database_cidr   = "10.20.0.0/16"
  inspection_cidr = "10.100.0.0/16"
  spoke_cidrs     = [local.eks_cidr, local.database_cidr]

  zones      = { for i, id in slice(data.aws_availability_zones.available.zone_ids, 0, var.zone_count) : id => i }
  first_zone = one([for id, i in local.zones : id if i == 0])

  eks_public_cidrs     = { for id, i in local.zones : id => cidrsubnet(local.eks_cidr, 8, i) }
  eks_private_cidrs    = { for id, i in local.zones : id => cidrsubnet(local.eks_cidr, 4, 1 + i) }
  eks_tgw_cidrs        = { for id, i in local.zones : id => cidrsubnet(local.eks_cidr, 12, 4000 + i) }
  database_cidrs       = { for id, i in local.zones : id => cidrsubnet(local.database_cidr, 8, i) }
  database_tgw_cidrs   = { for id, i in local.zones : id => cidrsubnet(local.database_cidr, 12, 4000 + i) }
  inspection_tgw_cidrs = { for id, i in local.zones : id => cidrsubnet(local.inspection_cidr, 8, 64 + i) }
  inspection_gwe_cidrs = { for id, i in local.zones : id => cidrsubnet(local.inspection_cidr, 12, 1280 + i) }
}

# ---------------------------------------------------------------------------------------------
# Transit gateway: no default tables, so that nothing is routed around the inspection VPC.
# ---------------------------------------------------------------------------------------------

resource "aws_ec2_transit_gateway" "this" {
  description                     = "${var.name}: EKS and database VPCs through the inspection VPC"
  default_route_table_association = "disable"
  default_route_table_propagation = "disable"
  auto_accept_shared_attachments  = "disable"
  dns_support                     = "enable"

  tags = { Name = var.name }
}

resource "aws_ec2_transit_gateway_vpc_attachment" "eks" {
  transit_gateway_id                              = aws_ec2_transit_gateway.this.id
  vpc_id                                          = aws_vpc.eks.id
  subnet_ids                                      = [for s in aws_subnet.eks_tgw : s.id]
  transit_gateway_default_route_table_association = false
  transit_gateway_default_route_table_propagation = false

  tags = { Name = "${var.name}-eks" }
}

resource "aws_ec2_transit_gateway_vpc_attachment" "database" {
  transit_gateway_id                              = aws_ec2_transit_gateway.this.id
  vpc_id                                          = aws_vpc.database.id
  subnet_ids                                      = [for s in aws_subnet.database_tgw : s.id]
  transit_gateway_default_route_table_association = false
  transit_gateway_default_route_table_propagation = false

  tags = { Name = "${var.name}-database" }
}

# Appliance mode: TGW picks the zone of a flow from its 4-tuple, once, for both directions.
# Without it, a reply may enter the inspection VPC in another zone, reach another zone's
# endpoint and appliance, and be dropped as half a flow.
resource "aws_ec2_transit_gateway_vpc_attachment" "inspection" {
  transit_gateway_id                              = aws_ec2_transit_gateway.this.id
  vpc_id                                          = module.inspection.vpc_id
  subnet_ids                                      = [for s in aws_subnet.inspection_tgw : s.id]
  appliance_mode_support                          = "enable"
  transit_gateway_default_route_table_association = false
  transit_gateway_default_route_table_propagation = false

  tags = { Name = "${var.name}-inspection" }
}

# The spokes' table: every spoke CIDR goes to the inspection VPC, never straight to a spoke.
resource "aws_ec2_transit_gateway_route_table" "spokes" {
  transit_gateway_id = aws_ec2_transit_gateway.this.id

  tags = { Name = "${var.name}-spokes" }
}

resource "aws_ec2_transit_gateway_route_table_association" "spokes" {
  for_each = {
    eks      = aws_ec2_transit_gateway_vpc_attachment.eks.id
    database = aws_ec2_transit_gateway_vpc_attachment.database.id
  }

  transit_gateway_attachment_id  = each.value
  transit_gateway_route_table_id = aws_ec2_transit_gateway_route_table.spokes.id
}

resource "aws_ec2_transit_gateway_route" "spokes_to_inspection" {
  for_each = toset(local.spoke_cidrs)

  destination_cidr_block         = each.key
  transit_gateway_attachment_id  = aws_ec2_transit_gateway_vpc_attachment.inspection.id
  transit_gateway_route_table_id = aws_ec2_transit_gateway_route_table.spokes.id
}

# The inspection VPC's table: inspected traffic goes on to the spoke that owns the address.
resource "aws_ec2_transit_gateway_route_table" "inspection" {
  transit_gateway_id = aws_ec2_transit_gateway.this.id

  tags = { Name = "${var.name}-inspection" }
}

resource "aws_ec2_transit_gateway_route_table_association" "inspection" {
  transit_gateway_attachment_id  = aws_ec2_transit_gateway_vpc_attachment.inspection.id
  transit_gateway_route_table_id = aws_ec2_transit_gateway_route_table.inspection.id
}

resource "aws_ec2_transit_gateway_route" "inspection_to_spokes" {
  for_each = {
    (local.eks_cidr)      = aws_ec2_transit_gateway_vpc_attachment.eks.id
    (local.database_cidr) = aws_ec2_transit_gateway_vpc_attachment.database.id
  }

  destination_cidr_block         = each.key
  transit_gateway_attachment_id  = each.value
  transit_gateway_route_table_id = aws_ec2_transit_gateway_route_table.inspection.id
}

# ---------------------------------------------------------------------------------------------
# Inspection VPC: transit gateway subnets and the GWLB endpoints (both directions of every
# spoke-to-spoke flow enter from the transit gateway subnets and leave to the transit gateway)
# ---------------------------------------------------------------------------------------------

resource "aws_subnet" "inspection_tgw" {
  for_each = local.zones

  vpc_id               = module.inspection.vpc_id
  availability_zone_id = each.key
  cidr_block           = local.inspection_tgw_cidrs[each.key]

  tags = { Name = "${var.name}-inspection-tgw-${each.key}" }
}

# One table per zone: each zone's transit gateway subnet sends to its own zone's endpoint.
resource "aws_route_table" "inspection_tgw" {
  for_each = local.zones

  vpc_id = module.inspection.vpc_id

  tags = { Name = "${var.name}-inspection-tgw-${each.key}" }
}

resource "aws_route_table_association" "inspection_tgw" {
  for_each = aws_subnet.inspection_tgw

  subnet_id      = each.value.id
  route_table_id = aws_route_table.inspection_tgw[each.key].id
}

module "east_west_inspection" {
  source = "../../modules/gwlb-endpoints"

  name         = "${var.name}-ew"
  tags         = var.tags
  vpc_id       = module.inspection.vpc_id
  service_name = module.inspection.endpoint_service_name

  zones = {
    for id in keys(local.zones) : id => {
      endpoint_subnet_cidr   = local.inspection_gwe_cidrs[id]
      source_cidrs           = local.spoke_cidrs
      source_route_table_ids = [aws_route_table.inspection_tgw[id].id]
      transit_gateway_id     = aws_ec2_transit_gateway.this.id
    }
  }

  # Both spokes, both ways: what arrives from the transit gateway goes to the endpoint, and
  # after inspection back to the transit gateway. Replies arrive in the same transit gateway
  # subnets (appliance mode keeps them in the zone), so the source routes carry them too.
  inspected_destination_cidrs       = local.spoke_cidrs
  transit_gateway_destination_cidrs = local.spoke_cidrs
  nat_destination_cidrs             = []
  replies_via_source_route_tables   = local.spoke_cidrs

  depends_on = [aws_ec2_transit_gateway_vpc_attachment.inspection]
}

# ---------------------------------------------------------------------------------------------
# EKS VPC
# ---------------------------------------------------------------------------------------------

resource "aws_vpc" "eks" {
  #checkov:skip=CKV2_AWS_11:demo workload VPC; labelwall's flow log records every inspected flow
  cidr_block           = local.eks_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true

  tags = { Name = "${var.name}-eks" }
}

resource "aws_default_security_group" "eks" {
  vpc_id = aws_vpc.eks.id

  tags = { Name = "${var.name}-eks-default-deny" }
}

resource "aws_internet_gateway" "eks" {
  vpc_id = aws_vpc.eks.id

  tags = { Name = "${var.name}-eks" }
}

resource "aws_subnet" "eks_public" {
  for_each = local.zones

  vpc_id               = aws_vpc.eks.id
  availability_zone_id = each.key
  cidr_block           = local.eks_public_cidrs[each.key]

  tags = { Name = "${var.name}-eks-public-${each.key}", "kubernetes.io/role/elb" = "1" }
}

resource "aws_subnet" "eks_private" {
  for_each = local.zones

  vpc_id               = aws_vpc.eks.id
  availability_zone_id = each.key
  cidr_block           = local.eks_private_cidrs[each.key]

  tags = { Name = "${var.name}-eks-private-${each.key}", "kubernetes.io/role/internal-elb" = "1" }
}

resource "aws_subnet" "eks_tgw" {
  for_each = local.zones

  vpc_id               = aws_vpc.eks.id
  availability_zone_id = each.key
  cidr_block           = local.eks_tgw_cidrs[each.key]

  tags = { Name = "${var.name}-eks-tgw-${each.key}" }
}

resource "aws_eip" "eks_nat" {
  for_each = local.zones

  domain = "vpc"

  tags = { Name = "${var.name}-eks-nat-${each.key}" }

  depends_on = [aws_internet_gateway.eks]
}

resource "aws_nat_gateway" "eks" {
  for_each = local.zones

  allocation_id = aws_eip.eks_nat[each.key].id
  subnet_id     = aws_subnet.eks_public[each.key].id

  tags = { Name = "${var.name}-eks-nat-${each.key}" }
}

resource "aws_route_table" "eks_public" {
  vpc_id = aws_vpc.eks.id

  tags = { Name = "${var.name}-eks-public" }
}

resource "aws_route" "eks_public_default" {
  route_table_id         = aws_route_table.eks_public.id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.eks.id
}

resource "aws_route_table_association" "eks_public" {
  for_each = aws_subnet.eks_public

  subnet_id      = each.value.id
  route_table_id = aws_route_table.eks_public.id
}

resource "aws_route_table" "eks_private" {
  for_each = local.zones

  vpc_id = aws_vpc.eks.id

  tags = { Name = "${var.name}-eks-private-${each.key}" }
}

resource "aws_route" "eks_private_default" {
  for_each = local.zones

  route_table_id         = aws_route_table.eks_private[each.key].id
  destination_cidr_block = "0.0.0.0/0"
  nat_gateway_id         = aws_nat_gateway.eks[each.key].id
}

# The database VPC only through the transit gateway, that is through inspection.
resource "aws_route" "eks_private_to_database" {
  for_each = local.zones

  route_table_id         = aws_route_table.eks_private[each.key].id
  destination_cidr_block = local.database_cidr
  transit_gateway_id     = aws_ec2_transit_gateway.this.id

  depends_on = [aws_ec2_transit_gateway_vpc_attachment.eks]
}

resource "aws_route_table_association" "eks_private" {
  for_each = aws_subnet.eks_private

  subnet_id      = each.value.id
  route_table_id = aws_route_table.eks_private[each.key].id
}

# The attachment subnets need only the local route: what the transit gateway delivers here
# is for this VPC.
resource "aws_route_table" "eks_tgw" {
  vpc_id = aws_vpc.eks.id

  tags = { Name = "${var.name}-eks-tgw" }
}

resource "aws_route_table_association" "eks_tgw" {
  for_each = aws_subnet.eks_tgw

  subnet_id      = each.value.id
  route_table_id = aws_route_table.eks_tgw.id
}

# ---------------------------------------------------------------------------------------------
# Database VPC: no internet at all; S3 (the Amazon Linux package repositories) through a
# gateway endpoint, the EKS VPC through the transit gateway.
# ---------------------------------------------------------------------------------------------

resource "aws_vpc" "database" {
  #checkov:skip=CKV2_AWS_11:demo database VPC; labelwall's flow log records every inspected flow
  cidr_block           = local.database_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true

  tags = { Name = "${var.name}-database" }
}

resource "aws_default_security_group" "database" {
  vpc_id = aws_vpc.database.id

  tags = { Name = "${var.name}-database-default-deny" }
}

resource "aws_subnet" "database" {
  for_each = local.zones

  vpc_id               = aws_vpc.database.id
  availability_zone_id = each.key
  cidr_block           = local.database_cidrs[each.key]

  tags = { Name = "${var.name}-database-${each.key}" }
}

resource "aws_subnet" "database_tgw" {
  for_each = local.zones

  vpc_id               = aws_vpc.database.id
  availability_zone_id = each.key
  cidr_block           = local.database_tgw_cidrs[each.key]

  tags = { Name = "${var.name}-database-tgw-${each.key}" }
}

resource "aws_route_table" "database" {
  vpc_id = aws_vpc.database.id

  tags = { Name = "${var.name}-database" }
}

resource "aws_route" "database_to_eks" {
  route_table_id         = aws_route_table.database.id
  destination_cidr_block = local.eks_cidr
  transit_gateway_id     = aws_ec2_transit_gateway.this.id

  depends_on = [aws_ec2_transit_gateway_vpc_attachment.database]
}

resource "aws_route_table_association" "database" {
  for_each = aws_subnet.database

  subnet_id      = each.value.id
  route_table_id = aws_route_table.database.id
}

resource "aws_route_table" "database_tgw" {
  vpc_id = aws_vpc.database.id

  tags = { Name = "${var.name}-database-tgw" }
}

resource "aws_route_table_association" "database_tgw" {
  for_each = aws_subnet.database_tgw

  subnet_id      = each.value.id
  route_table_id = aws_route_table.database_tgw.id
}

data "aws_region" "current" {}

resource "aws_vpc_endpoint" "database_s3" {
  vpc_id            = aws_vpc.database.id
  service_name      = "com.amazonaws.${data.aws_region.current.name}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = [aws_route_table.database.id]

  tags = { Name = "${var.name}-database-s3" }
}
