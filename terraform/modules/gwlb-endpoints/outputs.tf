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
