output "vpc_id" {
  description = "ID of the inspection VPC."
  value       = aws_vpc.this.id
}

output "gwlb_arn" {
  description = "ARN of the Gateway Load Balancer."
  value       = aws_lb.this.arn
}

output "target_group_arn" {
  description = "ARN of the GENEVE target group the appliances register in."
  value       = aws_lb_target_group.this.arn
}

output "endpoint_service_name" {
  description = "Service name consumers create GWLB endpoints for (com.amazonaws.vpce.REGION.vpce-svc-...); the service_name input of the gwlb-endpoints module."
  value       = aws_vpc_endpoint_service.this.service_name
}

output "endpoint_service_id" {
  description = "ID of the VPC endpoint service (vpce-svc-...)."
  value       = aws_vpc_endpoint_service.this.id
}

output "availability_zones" {
  description = "Zones the GWLB is enabled in; consumer endpoints must be in a subset of them."
  value       = var.availability_zones
}

output "gwlb_subnet_ids" {
  description = "GWLB subnet per zone."
  value       = { for az, s in aws_subnet.gwlb : az => s.id }
}

output "gwlb_subnet_cidrs" {
  description = "GWLB subnet CIDR per zone: the only sources of GENEVE and health checks the appliances accept."
  value       = local.gwlb_subnet_cidrs
}

output "appliance_subnet_ids" {
  description = "Appliance subnet per zone."
  value       = { for az, s in aws_subnet.appliance : az => s.id }
}

output "nat_public_ips" {
  description = "Public addresses the appliances' own traffic leaves from (per zone); add them as /32s to the EKS cluster's public_access_cidrs when the appliances reach a public API endpoint."
  value       = { for az, e in aws_eip.nat : az => e.public_ip }
}

output "security_group_id" {
  description = "Security group of the appliances."
  value       = aws_security_group.appliance.id
}

output "instance_role_arn" {
  description = "ARN of the appliances' IAM role: the principal of the EKS access entries of every watched cluster."
  value       = aws_iam_role.appliance.arn
}

output "instance_role_name" {
  description = "Name of the appliances' IAM role."
  value       = aws_iam_role.appliance.name
}

output "autoscaling_group_name" {
  description = "Name of the appliances' autoscaling group (aws autoscaling start-instance-refresh --auto-scaling-group-name ...)."
  value       = aws_autoscaling_group.appliance.name
}

output "launch_template_id" {
  description = "ID of the appliances' launch template."
  value       = aws_launch_template.appliance.id
}
