variable "region" {
  description = "AWS region to deploy the scenario in."
  type        = string
  default     = "eu-west-1"
}

variable "name" {
  description = "Name prefix of everything this example creates (also the EKS cluster's name)."
  type        = string
  default     = "labelwall-ew"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,22}[a-z0-9]$", var.name))
    error_message = "name must be 2-24 characters of lowercase letters, digits and '-'."
  }
}

variable "zone_count" {
  description = "Number of availability zones for the three VPCs and the appliances (2 or 3)."
  type        = number
  default     = 2

  validation {
    condition     = var.zone_count >= 2 && var.zone_count <= 3
    error_message = "zone_count must be 2 or 3."
  }
}

variable "appliance_count" {
  description = "Fleet appliances (the autoscaling group's minimum; one canary per zone comes on top). null = two per zone. With cross_zone_load_balancing off each zone needs two: one appliance failure must not stop a zone's inspected traffic."
  type        = number
  default     = null

  validation {
    condition     = var.appliance_count == null || var.cross_zone_load_balancing || coalesce(var.appliance_count, 0) >= 2 * var.zone_count
    error_message = "appliance_count = ${coalesce(var.appliance_count, 0)} over ${var.zone_count} zones leaves a zone with fewer than two appliances while cross_zone_load_balancing is off: one failure would stop that zone's inspected traffic. Set appliance_count to at least ${2 * var.zone_count} (or null), or set cross_zone_load_balancing = true."
  }
}

variable "cross_zone_load_balancing" {
  description = "Let GWLB send a zone's flows to appliances of other zones (inter-zone data charges; fewer appliances needed)."
  type        = bool
  default     = false
}

variable "alarm_actions" {
  description = "SNS topic ARNs notified by the appliances' alarms."
  type        = list(string)
  default     = []
}

variable "kubernetes_version" {
  description = "Kubernetes version of the EKS cluster."
  type        = string
  default     = "1.31"
}

variable "operator_cidrs" {
  description = "Public CIDRs of the operators' workstations or CI, allowed to the EKS API endpoint (kubectl). The appliances' NAT addresses are added automatically."
  type        = list(string)

  validation {
    condition     = length(var.operator_cidrs) > 0 && alltrue([for c in var.operator_cidrs : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])
    error_message = "operator_cidrs must list at least one CIDR and must not be 0.0.0.0/0."
  }
}

variable "release_tarball_path" {
  description = "Local path of the release tarball made by appliance/build-release.sh; uploaded to the config bucket and installed by the appliances."
  type        = string

  validation {
    condition     = endswith(var.release_tarball_path, ".tar.gz") && fileexists(var.release_tarball_path)
    error_message = "release_tarball_path must name an existing .tar.gz made by appliance/build-release.sh."
  }
}

variable "appliance_instance_type" {
  description = "Instance type of the labelwall appliances."
  type        = string
  default     = "c6in.large"
}

variable "node_instance_type" {
  description = "Instance type of the EKS managed node group."
  type        = string
  default     = "t3.large"
}

variable "scrape_cidrs" {
  description = "CIDRs allowed to scrape the appliances' /metrics (your Prometheus, and where labelwall-rollout runs)."
  type        = list(string)
  default     = []
}

variable "create_test_database" {
  description = "Create the scenario's rating-database: a small MariaDB instance at 10.20.0.10 in the database VPC (the address appliance/examples/east-west/inventory.yaml names)."
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = { project = "labelwall", scenario = "east-west" }
}
