# Consumer side of GWLB inspection: one GWLB endpoint per zone, each in its own subnet, and the
# routes that make both directions of every inspected flow cross the endpoint of the zone the
# workload lives in:
#
#   pod subnet --(inspected destination)--> endpoint --> [labelwall] --> endpoint subnet
#     endpoint subnet --> NAT gateway / transit gateway / local route --> destination
#   return: NAT / TGW / destination subnet --(pod CIDR)--> same endpoint --> pod subnet

locals {
  # Keys use zone names, list positions and CIDRs, never route table IDs: those are often
  # unknown until apply, and for_each keys must be known at plan time.
  # "ZONE|INDEX|CIDR": INDEX is the position in zones[ZONE].source_route_table_ids.
  source_routes = merge([
    for az, z in var.zones : {
      for pair in setproduct(range(length(z.source_route_table_ids)), var.inspected_destination_cidrs) :
      "${az}|${pair[0]}|${pair[1]}" => { az = az, route_table_id = z.source_route_table_ids[pair[0]], destination = pair[1] }
    }
  ]...)

  # "ZONE|INDEX|CIDR": INDEX is the position in return_route_tables, CIDR a source CIDR of ZONE.
  return_routes = merge([
    for az, z in var.zones : {
      for pair in setproduct(range(length(var.return_route_tables)), z.source_cidrs) :
      "${az}|${pair[0]}|${pair[1]}" => { az = az, route_table_id = var.return_route_tables[pair[0]].route_table_id, destination = pair[1] }
    }
  ]...)

  destinations_without_return_path = sort(tolist(setsubtract(var.inspected_destination_cidrs, concat(
    flatten([for t in var.return_route_tables : t.for_destinations]), var.replies_via_source_route_tables,
  ))))

  nat_routes = merge([
    for az, z in var.zones : {
      for cidr in var.nat_destination_cidrs :
      "${az}|${cidr}" => { az = az, destination = cidr, nat_gateway_id = z.nat_gateway_id }
    }
  ]...)

  transit_gateway_routes = merge([
    for az, z in var.zones : {
      for cidr in var.transit_gateway_destination_cidrs :
      "${az}|${cidr}" => { az = az, destination = cidr, transit_gateway_id = z.transit_gateway_id }
    }
  ]...)
}

# IPv6 is not routed through the endpoints by this module: in a dual-stack VPC, ::/0 through
# an egress-only internet gateway would leave pods uninspected while the policy names "::/0".
# Refuse the VPC instead of inspecting half of its traffic.
data "aws_vpc" "consumer" {
  id = var.vpc_id
}

resource "aws_subnet" "endpoint" {
  for_each = var.zones

  vpc_id               = var.vpc_id
  availability_zone_id = each.key
  cidr_block           = each.value.endpoint_subnet_cidr

  lifecycle {
    precondition {
      condition     = data.aws_vpc.consumer.ipv6_cidr_block == null || data.aws_vpc.consumer.ipv6_cidr_block == ""
      error_message = "VPC ${var.vpc_id} is dual-stack (IPv6 ${coalesce(data.aws_vpc.consumer.ipv6_cidr_block, "-")}): this module routes only IPv4 through the endpoints, so the pods' IPv6 traffic would leave uninspected although a policy may name ::/0. Use it with an IPv4-only VPC (disassociate the IPv6 CIDR)."
    }
  }

  tags = merge(var.tags, { Name = "${var.name}-gwlbe-${each.key}" })
}

resource "aws_route_table" "endpoint" {
  for_each = var.zones

  vpc_id = var.vpc_id

  tags = merge(var.tags, { Name = "${var.name}-gwlbe-${each.key}" })
}

resource "aws_route_table_association" "endpoint" {
  for_each = var.zones

  subnet_id      = aws_subnet.endpoint[each.key].id
  route_table_id = aws_route_table.endpoint[each.key].id
}

resource "aws_vpc_endpoint" "this" {
  for_each = var.zones

  vpc_id            = var.vpc_id
  service_name      = var.service_name
  vpc_endpoint_type = "GatewayLoadBalancer"
  # Exactly one subnet: a GWLB endpoint lives in one zone, and the routes below rely on it.
  subnet_ids = [aws_subnet.endpoint[each.key].id]

  lifecycle {
    # Inspection one way only is worse than none: labelwall sees half a flow and, under a
    # default deny, drops what it cannot place. Every inspected destination must name where
    # its replies enter, so that those get routes back through the same endpoint.
    precondition {
      condition     = length(local.destinations_without_return_path) == 0
      error_message = "Inspected destinations without a return path: ${jsonencode(local.destinations_without_return_path)}. Their replies would bypass the endpoint (inspection one way only). Add the route table where each one's replies enter (its NAT gateway's subnet, the destination subnets, the transit gateway attachment subnets) to return_route_tables with the destination in for_destinations, or list it in replies_via_source_route_tables when replies arrive in the source subnets themselves."
    }

    precondition {
      condition     = length(var.replies_via_source_route_tables) == 0 || alltrue([for c in each.value.source_cidrs : contains(var.inspected_destination_cidrs, c) || contains(var.inspected_destination_cidrs, "0.0.0.0/0")])
      error_message = "replies_via_source_route_tables: replies go to zone ${each.key}'s source CIDRs ${jsonencode(each.value.source_cidrs)}, so the source tables must route those to the endpoint too: list them, or 0.0.0.0/0, in inspected_destination_cidrs."
    }
  }

  tags = merge(var.tags, { Name = "${var.name}-gwlbe-${each.key}" })
}

# Workload subnets -> endpoint of their zone.
resource "aws_route" "source" {
  for_each = local.source_routes

  route_table_id         = each.value.route_table_id
  destination_cidr_block = each.value.destination
  vpc_endpoint_id        = aws_vpc_endpoint.this[each.value.az].id
}

# Where return traffic enters -> endpoint of the workload's zone.
resource "aws_route" "return" {
  for_each = local.return_routes

  route_table_id         = each.value.route_table_id
  destination_cidr_block = each.value.destination
  vpc_endpoint_id        = aws_vpc_endpoint.this[each.value.az].id
}

# After inspection: endpoint subnet -> NAT gateway of the same zone.
resource "aws_route" "nat" {
  for_each = local.nat_routes

  route_table_id         = aws_route_table.endpoint[each.value.az].id
  destination_cidr_block = each.value.destination
  nat_gateway_id         = each.value.nat_gateway_id

  lifecycle {
    precondition {
      condition     = each.value.nat_gateway_id != null
      error_message = "Zone ${each.value.az} has no nat_gateway_id but nat_destination_cidrs is not empty."
    }
  }
}

# After inspection: endpoint subnet -> transit gateway.
resource "aws_route" "transit_gateway" {
  for_each = local.transit_gateway_routes

  route_table_id         = aws_route_table.endpoint[each.value.az].id
  destination_cidr_block = each.value.destination
  transit_gateway_id     = each.value.transit_gateway_id

  lifecycle {
    precondition {
      condition     = each.value.transit_gateway_id != null
      error_message = "Zone ${each.value.az} has no transit_gateway_id but transit_gateway_destination_cidrs is not empty."
    }
  }
}
