output "cluster_name" {
  description = "EKS cluster name (aws eks update-kubeconfig --name ...)."
  value       = aws_eks_cluster.this.name
}

output "transit_gateway_id" {
  description = "The transit gateway joining the EKS, database and inspection VPCs."
  value       = aws_ec2_transit_gateway.this.id
}

output "gwlb_endpoint_ids" {
  description = "GWLB endpoint per zone ID in the inspection VPC (east-west traffic crosses them)."
  value       = module.east_west_inspection.endpoint_ids
}

output "appliance_autoscaling_group" {
  description = "Autoscaling group of the labelwall fleet."
  value       = module.inspection.autoscaling_group_name
}

output "canary_autoscaling_groups" {
  description = "Canary group per zone (labelwall-rollout rollout --canary-asg)."
  value       = module.inspection.canary_autoscaling_group_names
}

output "bundle_parameters" {
  description = "The pointers (SSM parameters) of the fleet and canary channels."
  value       = module.inspection.bundle_parameters
}

output "config_s3_uri" {
  description = "Prefix of the policy bundles (labelwall-rollout publish --config-s3-uri)."
  value       = local.config_s3_uri
}

output "log_groups" {
  description = "Where the flow log and the journal go."
  value       = module.inspection.log_groups
}

output "appliance_role_arn" {
  description = "IAM role of the appliances (the principal of the EKS access entry)."
  value       = module.inspection.instance_role_arn
}

output "rating_database_ip" {
  description = "Address of the scenario's database (null when create_test_database is false)."
  value       = var.create_test_database ? aws_instance.rating_database[0].private_ip : null
}
