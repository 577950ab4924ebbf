# ---------------------------------------------------------------------------------------------
# Naming and placement
# ---------------------------------------------------------------------------------------------

variable "name" {
  description = "Name prefix for every resource of this inspection VPC (load balancer and target group names are derived from it and limited to 32 characters by AWS)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,22}[a-z0-9]$", var.name))
    error_message = "name must be 2-24 characters of lowercase letters, digits and '-', starting with a letter and not ending with '-'."
  }
}

variable "tags" {
  description = "Tags added to every resource this module creates (and propagated to the appliance instances and their volumes)."
  type        = map(string)
  default     = {}
}

variable "vpc_cidr" {
  description = "IPv4 CIDR of the inspection VPC. It is cut into /(prefix+subnet_newbits) subnets: GWLB subnets, appliance subnets and (with NAT gateways) public subnets, one of each per availability zone."
  type        = string
  default     = "10.100.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) <= 24
    error_message = "vpc_cidr must be a valid IPv4 CIDR with a prefix of /24 or shorter."
  }
}

variable "subnet_newbits" {
  description = "Bits added to the VPC prefix for each subnet (8 turns a /16 into /24 subnets). GWLB subnets take indexes 0-15, appliance subnets 16-31, public subnets 32-47."
  type        = number
  default     = 8

  validation {
    condition     = var.subnet_newbits >= 6 && var.subnet_newbits <= 12
    error_message = "subnet_newbits must be between 6 and 12 (at least 48 subnets must fit in the VPC)."
  }
}

variable "availability_zone_ids" {
  description = "Availability zone IDs (e.g. euw1-az1, not names like eu-west-1a) to place the GWLB and the appliances in. IDs name the same physical zone in every account; names do not, so consumer accounts must place their endpoints by ID too (the gwlb-endpoints module takes IDs). Every consumer endpoint's zone must be in this list."
  type        = list(string)

  validation {
    condition     = length(var.availability_zone_ids) >= 1 && length(var.availability_zone_ids) <= 16 && length(distinct(var.availability_zone_ids)) == length(var.availability_zone_ids)
    error_message = "availability_zone_ids must list 1 to 16 distinct zone IDs."
  }

  validation {
    condition     = alltrue([for id in var.availability_zone_ids : can(regex("^[a-z]{2,5}[0-9]+(-[a-z]+[0-9]+)?-az[0-9]+$", id))])
    error_message = "availability_zone_ids must be zone IDs such as euw1-az1 (aws ec2 describe-availability-zones --query 'AvailabilityZones[].ZoneId'), not zone names such as eu-west-1a: a name means a different physical zone in each account."
  }
}

variable "create_nat_gateways" {
  description = "Create an internet gateway, public subnets and one NAT gateway per zone so that the appliances can reach S3, STS and the EKS API server. Set false only when the appliance subnets reach those through other means (VPC endpoints plus a transit gateway to a private EKS endpoint): this module then adds no default route."
  type        = bool
  default     = true
}

variable "vpc_flow_log_destination_arn" {
  description = "ARN of an S3 bucket (or bucket/prefix) receiving the inspection VPC's flow logs; null disables them. Recommended in production: they show GENEVE arriving at each appliance."
  type        = string
  default     = null

  validation {
    condition     = var.vpc_flow_log_destination_arn == null || can(regex("^arn:aws[a-z-]*:s3:::", var.vpc_flow_log_destination_arn))
    error_message = "vpc_flow_log_destination_arn must be an S3 bucket ARN (arn:aws:s3:::bucket[/prefix])."
  }
}

# ---------------------------------------------------------------------------------------------
# Gateway Load Balancer, target group, endpoint service
# ---------------------------------------------------------------------------------------------

variable "admin_port" {
  description = "TCP port of labelwall's admin HTTP listener (admin.listen). GWLB health checks GET /readyz on it; Prometheus scrapes /metrics on it. Must be unprivileged: the service holds CAP_NET_RAW only."
  type        = number
  default     = 8080

  validation {
    condition     = var.admin_port >= 1024 && var.admin_port <= 65535 && var.admin_port != 6081
    error_message = "admin_port must be between 1024 and 65535 and must not be 6081 (GENEVE)."
  }
}

variable "health_check_interval" {
  description = "Seconds between GWLB health checks of each appliance (GWLB allows 5-300)."
  type        = number
  default     = 10

  validation {
    condition     = var.health_check_interval >= 5 && var.health_check_interval <= 300
    error_message = "health_check_interval must be between 5 and 300 seconds."
  }
}

variable "health_check_timeout" {
  description = "Seconds a health check may take before it counts as failed (2-120, and less than the interval)."
  type        = number
  default     = 5

  validation {
    condition     = var.health_check_timeout >= 2 && var.health_check_timeout <= 120 && var.health_check_timeout < var.health_check_interval
    error_message = "health_check_timeout must be between 2 and 120 seconds and shorter than health_check_interval."
  }
}

variable "health_check_healthy_threshold" {
  description = "Consecutive successful /readyz checks before an appliance receives new flows (2-10)."
  type        = number
  default     = 3

  validation {
    condition     = var.health_check_healthy_threshold >= 2 && var.health_check_healthy_threshold <= 10
    error_message = "health_check_healthy_threshold must be between 2 and 10."
  }
}

variable "health_check_unhealthy_threshold" {
  description = "Consecutive failed /readyz checks before an appliance stops receiving new flows (2-10)."
  type        = number
  default     = 2

  validation {
    condition     = var.health_check_unhealthy_threshold >= 2 && var.health_check_unhealthy_threshold <= 10
    error_message = "health_check_unhealthy_threshold must be between 2 and 10."
  }
}

variable "deregistration_delay" {
  description = "Seconds GWLB keeps sending existing flows to a deregistering appliance (0-3600). The autoscaling group waits this long before terminating an instance, so it bounds how long a scale-in or an instance refresh step takes."
  type        = number
  default     = 300

  validation {
    condition     = var.deregistration_delay >= 0 && var.deregistration_delay <= 3600
    error_message = "deregistration_delay must be between 0 and 3600 seconds."
  }
}

variable "target_failover" {
  description = "What GWLB does with existing flows of an appliance that is deregistered or unhealthy; applied to both on_deregistration and on_unhealthy, which AWS requires to be equal. 'rebalance' moves the flows to healthy appliances (labelwall judges mid-flow packets at first sight, so this is safe and the recommended value); 'no_rebalance' keeps them on the failed appliance until they time out."
  type        = string
  default     = "rebalance"

  validation {
    condition     = contains(["no_rebalance", "rebalance"], var.target_failover)
    error_message = "target_failover must be \"no_rebalance\" or \"rebalance\"."
  }
}

variable "stickiness" {
  description = "How GWLB hashes flows onto appliances: '5_tuple' (default, source/destination IP and port, protocol), '3_tuple' (source IP, destination IP, protocol) or '2_tuple' (source and destination IP)."
  type        = string
  default     = "5_tuple"

  validation {
    condition     = contains(["5_tuple", "3_tuple", "2_tuple"], var.stickiness)
    error_message = "stickiness must be one of \"5_tuple\", \"3_tuple\", \"2_tuple\"."
  }
}

variable "tcp_idle_timeout" {
  description = "GWLB's TCP idle timeout in seconds (60-6000, default 350); only configurable with 5-tuple stickiness. labelwall's own TCP flow timeout must not exceed it (see docs/operations.md)."
  type        = number
  default     = 350

  validation {
    condition     = var.tcp_idle_timeout >= 60 && var.tcp_idle_timeout <= 6000
    error_message = "tcp_idle_timeout must be between 60 and 6000 seconds."
  }

  validation {
    condition     = var.tcp_idle_timeout == 350 || var.stickiness == "5_tuple"
    error_message = "tcp_idle_timeout can only be changed from 350 with 5_tuple stickiness."
  }
}

variable "cross_zone_load_balancing" {
  description = "Let each GWLB node send flows to appliances in every zone. Off keeps a zone's traffic on that zone's appliances (no inter-zone data charges, a zone's failure stays in the zone) but then each zone needs at least two appliances (min_size >= 2 x zones), or one appliance failure stops the zone's inspected traffic. On lets a zone survive without healthy appliances of its own, at the price of inter-zone data charges for the flows sent across."
  type        = bool
  default     = false
}

variable "deletion_protection" {
  description = "Protect the Gateway Load Balancer from deletion (terraform destroy then fails until this is set false and applied)."
  type        = bool
  default     = true
}

variable "endpoint_service_allowed_principals" {
  description = "IAM principal ARNs (accounts as arn:aws:iam::123456789012:root, roles or users) allowed to create GWLB endpoints to this inspection service."
  type        = list(string)

  validation {
    condition     = length(var.endpoint_service_allowed_principals) > 0 && alltrue([for p in var.endpoint_service_allowed_principals : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:", p))])
    error_message = "endpoint_service_allowed_principals must list at least one IAM ARN (arn:aws:iam::ACCOUNT:root|role/...|user/...); '*' is deliberately not accepted."
  }
}

variable "endpoint_service_acceptance_required" {
  description = "Require each endpoint connection to be accepted by the service owner. Leave false when allowed_principals already names only your own accounts; set true when principals of other teams may connect."
  type        = bool
  default     = false
}

# ---------------------------------------------------------------------------------------------
# Appliance instances
# ---------------------------------------------------------------------------------------------

variable "instance_type" {
  description = "EC2 instance type of the appliances. Network bandwidth matters more than CPU: c6in/c7gn give the most packets per second per dollar. The release tarball's architecture must match (x86_64 or aarch64)."
  type        = string
  default     = "c6in.large"
}

variable "ami_id" {
  description = "AMI of the appliances; null takes the latest Amazon Linux 2023 from ami_ssm_parameter. Any systemd distribution with the AWS CLI v2, curl, tar and sha256sum works."
  type        = string
  default     = null

  validation {
    condition     = var.ami_id == null || can(regex("^ami-[0-9a-f]{8,17}$", var.ami_id))
    error_message = "ami_id must be null or an AMI id (ami-...)."
  }
}

variable "ami_ssm_parameter" {
  description = "Public SSM parameter naming the AMI used when ami_id is null. Use the arm64 parameter with Graviton instance types and an aarch64 release."
  type        = string
  default     = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
}

variable "root_volume_size" {
  description = "Size in GiB of the appliances' encrypted gp3 root volume (holds the OS, the release, and the flow log until logrotate rotates it)."
  type        = number
  default     = 20

  validation {
    condition     = var.root_volume_size >= 8 && var.root_volume_size <= 1024
    error_message = "root_volume_size must be between 8 and 1024 GiB."
  }
}

variable "ebs_kms_key_arn" {
  description = "KMS key ARN for the root volume's encryption; null uses the account's default EBS key."
  type        = string
  default     = null
}

variable "min_size" {
  description = "Minimum number of fleet appliances (the canaries come on top). With cross-zone load balancing off, GWLB sends a zone's flows only to that zone's appliances: a zone with one appliance loses its inspected traffic when that appliance fails, so at least two per zone are required (min_size >= 2 x number of zones). With cross-zone on, one in total is accepted."
  type        = number
  default     = 4

  validation {
    condition     = var.min_size >= 1 && floor(var.min_size) == var.min_size
    error_message = "min_size must be a whole number of at least 1."
  }

  validation {
    condition     = var.cross_zone_load_balancing || var.min_size >= 2 * length(var.availability_zone_ids)
    error_message = "min_size = ${var.min_size} leaves a zone with fewer than two appliances over ${length(var.availability_zone_ids)} zones while cross_zone_load_balancing is off: one appliance failure would stop that zone's inspected traffic. Set min_size to at least ${2 * length(var.availability_zone_ids)}, or set cross_zone_load_balancing = true (and pay inter-zone data charges for flows sent across)."
  }
}

variable "max_size" {
  description = "Maximum number of fleet appliances the target tracking policy may scale to (GWLB takes up to 300 targets per zone per target group). Instance refresh and instance maintenance temporarily need room above the current capacity (launch before terminate)."
  type        = number
  default     = 8

  validation {
    condition     = var.max_size >= var.min_size && var.max_size >= 2
    error_message = "max_size must be at least min_size and at least 2 (a replacement is launched before the instance it replaces is terminated)."
  }
}

variable "desired_capacity" {
  description = "Fleet size at creation; null starts at min_size. After that the target tracking policy owns it: Terraform ignores later changes (an apply never resets a scaled-out fleet)."
  type        = number
  default     = null

  validation {
    condition     = var.desired_capacity == null || (coalesce(var.desired_capacity, 0) >= var.min_size && coalesce(var.desired_capacity, 0) <= var.max_size)
    error_message = "desired_capacity must be null or between min_size and max_size."
  }
}

variable "autoscaling_metric" {
  description = "What the target tracking policy keeps at autoscaling_target per appliance: \"cpu\" (average CPU utilisation in percent; labelwall's cost is per packet, so CPU follows the packet rate) or \"packets\" (average NetworkPacketsIn per appliance per minute, from EC2's detailed monitoring)."
  type        = string
  default     = "cpu"

  validation {
    condition     = contains(["cpu", "packets"], var.autoscaling_metric)
    error_message = "autoscaling_metric must be \"cpu\" or \"packets\"."
  }
}

variable "autoscaling_target" {
  description = "Target value of autoscaling_metric per appliance: percent CPU for \"cpu\" (default 50: room for a zone's share of a failed peer's flows), packets per minute for \"packets\" (size it from a load test: about half of what one appliance forwards without loss)."
  type        = number
  default     = 50

  validation {
    condition     = var.autoscaling_target > 0 && (var.autoscaling_metric != "cpu" || var.autoscaling_target <= 90)
    error_message = "autoscaling_target must be positive, and at most 90 (percent) with autoscaling_metric = \"cpu\"."
  }

  validation {
    condition     = var.autoscaling_target > 0 && (var.autoscaling_metric != "packets" || var.detailed_monitoring)
    error_message = "autoscaling_metric = \"packets\" needs detailed_monitoring = true (one-minute NetworkPacketsIn); otherwise use \"cpu\"."
  }
}

variable "canary_enabled" {
  description = "Run one canary appliance per zone (an autoscaling group per zone, same target group) that follows the canary bundle pointer; the fleet follows the fleet pointer. appliance/bin/labelwall-rollout moves the canary pointer first and the fleet's only after the canaries stayed healthy for the soak period. Off: both pointers still exist, every appliance follows the fleet's."
  type        = bool
  default     = true
}

variable "health_check_grace_period" {
  description = "Seconds after launch before the autoscaling group acts on failed ELB health checks: long enough for cloud-init to install labelwall and for every label source to sync (until then /readyz is 503)."
  type        = number
  default     = 300

  validation {
    condition     = var.health_check_grace_period >= 60 && var.health_check_grace_period <= 7200
    error_message = "health_check_grace_period must be between 60 and 7200 seconds."
  }
}

variable "instance_warmup" {
  description = "Seconds a new instance is given, during instance refresh, before it counts as in service."
  type        = number
  default     = 180

  validation {
    condition     = var.instance_warmup >= 0 && var.instance_warmup <= 3600
    error_message = "instance_warmup must be between 0 and 3600 seconds."
  }
}

variable "instance_refresh_min_healthy_percentage" {
  description = "Percentage of desired capacity that must stay in service during an instance refresh. 100 with a max_healthy_percentage above 100 launches each replacement before draining the instance it replaces."
  type        = number
  default     = 100

  validation {
    condition     = var.instance_refresh_min_healthy_percentage >= 0 && var.instance_refresh_min_healthy_percentage <= 100
    error_message = "instance_refresh_min_healthy_percentage must be between 0 and 100."
  }
}

variable "instance_refresh_max_healthy_percentage" {
  description = "Upper bound, in percent of desired capacity, of instances during an instance refresh (100-200). Must leave room for at least one extra instance when min_healthy_percentage is 100."
  type        = number
  default     = 200

  validation {
    condition     = var.instance_refresh_max_healthy_percentage >= 100 && var.instance_refresh_max_healthy_percentage <= 200 && var.instance_refresh_max_healthy_percentage - var.instance_refresh_min_healthy_percentage <= 100
    error_message = "instance_refresh_max_healthy_percentage must be between 100 and 200 and at most 100 above instance_refresh_min_healthy_percentage."
  }
}

variable "detailed_monitoring" {
  description = "Enable one-minute EC2 CloudWatch metrics on the appliances (network packets in/out per instance are the first thing to look at when traffic is missing)."
  type        = bool
  default     = true
}

# ---------------------------------------------------------------------------------------------
# What the appliance runs
# ---------------------------------------------------------------------------------------------

variable "release_url" {
  description = "Where cloud-init fetches the labelwall release tarball made by appliance/build-release.sh: s3://bucket/key.tar.gz (read with the instance role, which is granted s3:GetObject on exactly this object) or https://... (public or pre-signed)."
  type        = string

  validation {
    condition     = can(regex("^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+|https://.+)\\.tar\\.gz$", var.release_url))
    error_message = "release_url must be s3://BUCKET/KEY.tar.gz or https://.../NAME.tar.gz."
  }
}

variable "release_sha256" {
  description = "SHA-256 (64 lowercase hex digits) of the release tarball; cloud-init refuses to install a tarball that does not match. build-release.sh prints it and writes it next to the tarball."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-f]{64}$", var.release_sha256))
    error_message = "release_sha256 must be 64 lowercase hexadecimal digits."
  }
}

variable "config_s3_uri" {
  description = "S3 prefix of the policy bundles (s3://bucket/prefix): each bundle is PREFIX/bundles/ID/ with SHA256SUMS, policy.yaml and inventory.yaml, where ID is the SHA-256 of SHA256SUMS (appliance/bin/labelwall-rollout publish writes them). Appliances read the bundle ID from their channel's SSM parameter (the pointer) at boot and every config_sync_interval seconds, verify it, validate it with `labelwall check`, and reload. The instance role may s3:GetObject under PREFIX/bundles/ and nothing else there."
  type        = string

  validation {
    condition     = can(regex("^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$", var.config_s3_uri))
    error_message = "config_s3_uri must look like s3://bucket or s3://bucket/prefix."
  }
}

variable "initial_bundle_id" {
  description = "ID of the bundle both pointers start at (the SHA-256 of its SHA256SUMS, as printed by labelwall-rollout publish). Used only when the pointers are created: afterwards labelwall-rollout moves them and Terraform leaves their value alone."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-f]{64}$", var.initial_bundle_id))
    error_message = "initial_bundle_id must be 64 lowercase hexadecimal digits (the ID labelwall-rollout publish prints)."
  }
}

variable "config_kms_key_arn" {
  description = "KMS key ARN the config objects are encrypted with (SSE-KMS); the instance role gets kms:Decrypt on it through S3 only. null when the bucket uses SSE-S3."
  type        = string
  default     = null

  validation {
    condition     = var.config_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:", var.config_kms_key_arn))
    error_message = "config_kms_key_arn must be null or a KMS key ARN."
  }
}

variable "config_sync_interval" {
  description = "Seconds between reads of the appliance's bundle pointer (a changed ID is fetched, verified, checked and loaded); 0 disables periodic sync (config then changes only with new instances, and labelwall-rollout cannot be used)."
  type        = number
  default     = 60

  validation {
    condition     = var.config_sync_interval == 0 || (var.config_sync_interval >= 10 && var.config_sync_interval <= 86400)
    error_message = "config_sync_interval must be 0 or between 10 and 86400 seconds."
  }
}

variable "kubernetes_clusters" {
  description = <<-EOT
    EKS clusters labelwall watches for pod, namespace and node labels.
    - cluster: the name used in identities and policy selectors (labels.kubernetes[].cluster).
    - eks_cluster_name: the EKS name; region: defaults to the provider's region.
    - account_id: the cluster's account (default: this one). A cluster in another account cannot be described with this account's instance role: give describe_role_arn (a role in that account allowing eks:DescribeCluster on the cluster and trusting the instance role) or endpoint and certificate_authority_data.
    - endpoint, certificate_authority_data: the API server URL and its CA (base64), as inputs; then nothing is described at boot.
    Tokens are always made with the instance role: each cluster needs an access entry (type STANDARD, which may name a role of another account) putting the instance role in the Kubernetes group labelwall-readers, with no access policy, and appliance/kubernetes/rbac.yaml applied (see docs/kubernetes.md).
  EOT
  type = list(object({
    cluster                    = string
    eks_cluster_name           = string
    region                     = optional(string)
    account_id                 = optional(string)
    describe_role_arn          = optional(string)
    endpoint                   = optional(string)
    certificate_authority_data = optional(string)
  }))
  default = []

  validation {
    condition     = alltrue([for c in var.kubernetes_clusters : can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", c.cluster)) && can(regex("^[0-9A-Za-z][A-Za-z0-9_-]{0,99}$", c.eks_cluster_name))])
    error_message = "Each kubernetes_clusters entry needs cluster as a DNS label (lowercase letters, digits, '-') and a valid EKS cluster name."
  }

  validation {
    condition     = length(distinct([for c in var.kubernetes_clusters : c.cluster])) == length(var.kubernetes_clusters)
    error_message = "kubernetes_clusters[].cluster names must be unique."
  }

  validation {
    condition     = alltrue([for c in var.kubernetes_clusters : c.account_id == null || can(regex("^[0-9]{12}$", c.account_id))])
    error_message = "kubernetes_clusters[].account_id must be a 12-digit AWS account ID."
  }

  validation {
    condition     = alltrue([for c in var.kubernetes_clusters : c.describe_role_arn == null || can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+", c.describe_role_arn))])
    error_message = "kubernetes_clusters[].describe_role_arn must be an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)."
  }

  validation {
    condition     = alltrue([for c in var.kubernetes_clusters : (c.endpoint == null) == (c.certificate_authority_data == null) && (c.endpoint == null || can(regex("^https://[^/ ]+$", coalesce(c.endpoint, "-"))))])
    error_message = "kubernetes_clusters[]: give endpoint (https://HOST, no path) and certificate_authority_data together, or neither."
  }

  validation {
    condition     = alltrue([for c in var.kubernetes_clusters : !(c.endpoint != null && c.describe_role_arn != null)])
    error_message = "kubernetes_clusters[]: describe_role_arn is only used to describe the cluster; with endpoint and certificate_authority_data given, leave it out."
  }
}

variable "dataplane_workers" {
  description = "labelwall dataplane.workers: number of data-plane workers; 0 starts one per core."
  type        = number
  default     = 0

  validation {
    condition     = var.dataplane_workers >= 0 && var.dataplane_workers <= 512 && floor(var.dataplane_workers) == var.dataplane_workers
    error_message = "dataplane_workers must be a whole number between 0 and 512."
  }
}

variable "flow_log_path" {
  description = "labelwall flow_log.path on the appliances: a file under /var/log/labelwall (rotated daily by logrotate), \"-\" for the journal, or null to disable the flow log."
  type        = string
  default     = "/var/log/labelwall/flows.jsonl"

  validation {
    condition     = var.flow_log_path == null || var.flow_log_path == "-" || can(regex("^/var/log/labelwall/[A-Za-z0-9._-]+$", var.flow_log_path))
    error_message = "flow_log_path must be null, \"-\" or a file directly under /var/log/labelwall/ (the only directory the service may write)."
  }
}

variable "log_retention_days" {
  description = "Days CloudWatch Logs keeps the appliances' flow log and journal (one of CloudWatch's allowed values). The flow log is the audit trail of every inspected flow: keep it as long as your audit rules require."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of CloudWatch Logs' values: 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653."
  }
}

variable "log_kms_key_arn" {
  description = "KMS key ARN encrypting the log groups; null uses CloudWatch Logs' own encryption. The key policy must allow logs.REGION.amazonaws.com to use it."
  type        = string
  default     = null

  validation {
    condition     = var.log_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:", var.log_kms_key_arn))
    error_message = "log_kms_key_arn must be null or a KMS key ARN."
  }
}

variable "alarm_actions" {
  description = "ARNs (SNS topics) notified when an alarm goes to ALARM or back to OK. The alarms also stop and roll back an instance refresh whatever this is."
  type        = list(string)
  default     = []
}

variable "user_data_template_path" {
  description = "cloud-init template rendered into the launch template's user data; null uses appliance/cloud-init/user-data.yaml.tftpl of this repository. A replacement receives the same template variables."
  type        = string
  default     = null
}

# ---------------------------------------------------------------------------------------------
# Network access
# ---------------------------------------------------------------------------------------------

variable "scrape_cidrs" {
  description = "IPv4 CIDRs allowed to reach the admin port (Prometheus scraping /metrics, operators calling /readyz). The GWLB subnets are always allowed, for health checks."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.scrape_cidrs : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])
    error_message = "scrape_cidrs must be IPv4 CIDRs and must not include 0.0.0.0/0."
  }
}

variable "appliance_https_egress_cidrs" {
  description = "IPv4 CIDRs the appliances may open HTTPS connections to: S3 (release and config), STS, the EKS API endpoints and, with SSM enabled, Systems Manager. Narrow it to the NAT path's destinations or VPC endpoint subnets where your organisation requires it."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = length(var.appliance_https_egress_cidrs) > 0 && alltrue([for c in var.appliance_https_egress_cidrs : can(cidrhost(c, 0))])
    error_message = "appliance_https_egress_cidrs must list at least one IPv4 CIDR."
  }
}

variable "enable_ssm_session_manager" {
  description = "Attach AmazonSSMManagedInstanceCore to the instance role so operators get a shell through Session Manager (no SSH keys, no inbound port). Off by default to keep the role minimal."
  type        = bool
  default     = false
}
