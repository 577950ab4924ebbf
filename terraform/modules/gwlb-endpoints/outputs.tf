output "endpoint_ids" {
  description = "GWLB endpoint ID per zone."
  value       = { for az, e in aws_vpc_endpoint.this : az => e.id }
}

output "endpoint_subnet_ids" {
  description = "Endpoint subnet ID per zone."
  value       = { for az, s in aws_subnet.endpoint : az => s.id }
}

output "endpoint_route_table_ids" {
  description = "Route table of each zone's endpoint subnet (the post-inspection path); add routes here for destinations this module does not know."
  value       = { for az, rt in aws_route_table.endpoint : az => rt.id }
}

output "return_routes" {
  description = "Every return route: route table ID => CIDRs (workload subnets) it sends to an endpoint, with the endpoint ID. Lets callers and tests check that exactly the tables where replies enter carry them."
  value = {
    for rt in distinct([for r in aws_route.return : r.route_table_id]) : rt => {
      for r in aws_route.return : r.destination_cidr_block => r.vpc_endpoint_id if r.route_table_id == rt
    }
  }
}

output "source_routes" {
  description = "Every source route: route table ID => inspected destination => endpoint ID."
  value = {
    for rt in distinct([for r in aws_route.source : r.route_table_id]) : rt => {
      for r in aws_route.source : r.destination_cidr_block => r.vpc_endpoint_id if r.route_table_id == rt
    }
  }
}

output "post_inspection_routes" {
  description = "Where inspected traffic goes next, per zone: zone ID => destination => NAT gateway or transit gateway ID (routes of the endpoint subnets' tables)."
  value = {
    for az in keys(var.zones) : az => merge(
      { for r in aws_route.nat : r.destination_cidr_block => r.nat_gateway_id if r.route_table_id == aws_route_table.endpoint[az].id },
      { for r in aws_route.transit_gateway : r.destination_cidr_block => r.transit_gateway_id if r.route_table_id == aws_route_table.endpoint[az].id },
    )
  }
}
