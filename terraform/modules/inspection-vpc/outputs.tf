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

output "availability_zone_ids" {
  description = "Zone IDs the GWLB is enabled in; consumer endpoints (by zone ID, in any account) must be in a subset of them."
  value       = var.availability_zone_ids
}

output "availability_zone_names" {
  description = "Zone ID => this account's name for it."
  value       = local.zone_names
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
  description = "Name of the fleet's autoscaling group (aws autoscaling start-instance-refresh --auto-scaling-group-name ...)."
  value       = aws_autoscaling_group.appliance.name
}

output "canary_autoscaling_group_names" {
  description = "Zone ID => name of that zone's canary autoscaling group (one appliance each); empty when canary_enabled is false. labelwall-rollout --canary-asg takes them."
  value       = { for id, g in aws_autoscaling_group.canary : id => g.name }
}

output "launch_template_ids" {
  description = "Channel (fleet, canary) => launch template ID."
  value       = { for ch, lt in aws_launch_template.appliance : ch => lt.id }
}

output "bundle_parameters" {
  description = "Channel (fleet, canary) => SSM parameter holding the ID of the bundle it runs (the pointers labelwall-rollout moves)."
  value       = { for ch, p in aws_ssm_parameter.bundle : ch => p.name }
}

output "log_groups" {
  description = "CloudWatch log groups the appliances ship to: flows (the flow log) and journal (labelwall, config sync and bootstrap messages)."
  value       = { flows = aws_cloudwatch_log_group.flows.name, journal = aws_cloudwatch_log_group.journal.name }
}

output "alarm_names" {
  description = "CloudWatch alarms of the appliances (also the instance refresh's alarm specification)."
  value       = local.refresh_alarms
}
