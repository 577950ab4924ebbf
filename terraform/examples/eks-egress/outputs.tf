output "cluster_name" {
  description = "EKS cluster name (aws eks update-kubeconfig --name ...)."
  value       = aws_eks_cluster.this.name
}

output "endpoint_service_name" {
  description = "The inspection service; other VPCs attach to it with the gwlb-endpoints module."
  value       = module.inspection.endpoint_service_name
}

output "appliance_autoscaling_group" {
  description = "Autoscaling group of the labelwall appliances."
  value       = module.inspection.autoscaling_group_name
}

output "appliance_role_arn" {
  description = "IAM role of the appliances (the principal of the EKS access entry)."
  value       = module.inspection.instance_role_arn
}

output "config_s3_uri" {
  description = "Prefix of the policy bundles: publish new ones with appliance/bin/labelwall-rollout publish --config-s3-uri this."
  value       = local.config_s3_uri
}

output "bundle_parameters" {
  description = "The pointers (SSM parameters) of the fleet and canary channels."
  value       = module.inspection.bundle_parameters
}

output "canary_autoscaling_groups" {
  description = "Canary group per zone (labelwall-rollout --canary-asg)."
  value       = module.inspection.canary_autoscaling_group_names
}

output "log_groups" {
  description = "Where the flow log and the journal go."
  value       = module.inspection.log_groups
}

output "gwlb_endpoint_ids" {
  description = "GWLB endpoint per zone in the EKS VPC."
  value       = module.egress_inspection.endpoint_ids
}

output "rating_database_ip" {
  description = "Address of the scenario's database (null when create_test_database is false)."
  value       = var.create_test_database ? aws_instance.rating_database[0].private_ip : null
}
