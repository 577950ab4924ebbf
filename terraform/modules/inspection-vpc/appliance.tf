# The labelwall appliances: security group, instance role, launch template, autoscaling group.

data "aws_partition" "current" {}
data "aws_caller_identity" "current" {}

data "aws_ssm_parameter" "ami" {
  count = var.ami_id == null ? 1 : 0

  name = var.ami_ssm_parameter
}

locals {
  ami_id = var.ami_id != null ? var.ami_id : nonsensitive(data.aws_ssm_parameter.ami[0].value)

  # The networks GWLB's nodes send GENEVE from: the CIDRs of the subnets the GWLB is in, in
  # zone order. labelwall drops GENEVE from anywhere else (dataplane.allowed_peers, drop reason
  # peer_not_allowed), a second line behind the security group rules below.
  gwlb_cidrs = [for id in var.availability_zone_ids : aws_subnet.gwlb[id].cidr_block]

  # s3://bucket/prefix -> bucket, prefix ("" for the whole bucket). Bundles live under
  # PREFIX/bundles/ID/ and are immutable: a new policy is a new ID, never an overwrite.
  config_bucket      = regex("^s3://([^/]+)", var.config_s3_uri)[0]
  config_prefix      = trim(replace(var.config_s3_uri, "s3://${local.config_bucket}", ""), "/")
  config_uri         = local.config_prefix == "" ? "s3://${local.config_bucket}" : "s3://${local.config_bucket}/${local.config_prefix}"
  bundle_objects_arn = "arn:${data.aws_partition.current.partition}:s3:::${local.config_bucket}/${local.config_prefix == "" ? "" : "${local.config_prefix}/"}bundles/*"

  release_from_s3    = startswith(var.release_url, "s3://")
  release_object_arn = local.release_from_s3 ? "arn:${data.aws_partition.current.partition}:s3:::${trimprefix(var.release_url, "s3://")}" : null

  kubernetes_clusters = [
    for c in var.kubernetes_clusters : {
      cluster                    = c.cluster
      eks_cluster_name           = c.eks_cluster_name
      region                     = coalesce(c.region, data.aws_region.current.name)
      account_id                 = coalesce(c.account_id, data.aws_caller_identity.current.account_id)
      describe_role_arn          = c.describe_role_arn == null ? "" : c.describe_role_arn
      endpoint                   = c.endpoint == null ? "" : c.endpoint
      certificate_authority_data = c.certificate_authority_data == null ? "" : c.certificate_authority_data
    }
  ]
  # Only clusters of this account described with the instance role itself: IAM in this account
  # cannot grant eks:DescribeCluster on another account's cluster (EKS has no resource policy).
  eks_cluster_arns = [
    for c in local.kubernetes_clusters :
    "arn:${data.aws_partition.current.partition}:eks:${c.region}:${c.account_id}:cluster/${c.eks_cluster_name}"
    if c.endpoint == "" && c.describe_role_arn == ""
  ]
  describe_role_arns = distinct([for c in local.kubernetes_clusters : c.describe_role_arn if c.describe_role_arn != ""])

  # The fleet follows one pointer, the canaries (one per zone) another; see rollout.tf.
  channels = var.canary_enabled ? ["fleet", "canary"] : ["fleet"]

  user_data_template = coalesce(var.user_data_template_path, "${path.module}/../../../appliance/cloud-init/user-data.yaml.tftpl")
  user_data = {
    for ch in local.channels : ch => templatefile(local.user_data_template, {
      release_url          = var.release_url
      release_sha256       = var.release_sha256
      config_s3_uri        = local.config_uri
      bundle_parameter     = aws_ssm_parameter.bundle[ch].name
      channel              = ch
      config_sync_interval = var.config_sync_interval
      aws_region           = data.aws_region.current.name
      admin_port           = var.admin_port
      dataplane_workers    = var.dataplane_workers
      allowed_peers        = local.gwlb_cidrs
      tcp_idle_timeout     = var.tcp_idle_timeout
      flow_log_path        = var.flow_log_path == null ? "" : var.flow_log_path
      kubernetes_clusters  = local.kubernetes_clusters
      cloudwatch_agent_config = templatefile("${path.module}/../../../appliance/cloudwatch/amazon-cloudwatch-agent.json.tftpl", {
        flow_log_path     = var.flow_log_path == null || var.flow_log_path == "-" ? "" : var.flow_log_path
        flow_log_group    = aws_cloudwatch_log_group.flows.name
        journal_log_group = aws_cloudwatch_log_group.journal.name
      })
    })
  }
}

# ---------------------------------------------------------------------------------------------
# Security group
# ---------------------------------------------------------------------------------------------

resource "aws_security_group" "appliance" {
  name        = "${var.name}-appliance"
  description = "labelwall appliances: GENEVE from the GWLB subnets, admin port from health checks and scrapers"
  vpc_id      = aws_vpc.this.id

  tags = merge(var.tags, { Name = "${var.name}-appliance" })
}

resource "aws_vpc_security_group_ingress_rule" "geneve" {
  for_each = local.gwlb_subnet_cidrs

  security_group_id = aws_security_group.appliance.id
  description       = "GENEVE from GWLB nodes in ${each.key}"
  ip_protocol       = "udp"
  from_port         = local.geneve_port
  to_port           = local.geneve_port
  cidr_ipv4         = each.value

  tags = var.tags
}

# Packets go back to GWLB with the outer ports kept as they came (source = GWLB's port,
# destination = 6081), which is not the reverse of the tracked inbound flow: allow it
# explicitly instead of relying on connection tracking.
resource "aws_vpc_security_group_egress_rule" "geneve" {
  for_each = local.gwlb_subnet_cidrs

  security_group_id = aws_security_group.appliance.id
  description       = "GENEVE back to GWLB nodes in ${each.key}"
  ip_protocol       = "udp"
  from_port         = local.geneve_port
  to_port           = local.geneve_port
  cidr_ipv4         = each.value

  tags = var.tags
}

resource "aws_vpc_security_group_ingress_rule" "health_check" {
  for_each = local.gwlb_subnet_cidrs

  security_group_id = aws_security_group.appliance.id
  description       = "GWLB health checks (GET /readyz) from ${each.key}"
  ip_protocol       = "tcp"
  from_port         = var.admin_port
  to_port           = var.admin_port
  cidr_ipv4         = each.value

  tags = var.tags
}

resource "aws_vpc_security_group_ingress_rule" "scrape" {
  for_each = toset(var.scrape_cidrs)

  security_group_id = aws_security_group.appliance.id
  description       = "Prometheus scraping and operator access to the admin port"
  ip_protocol       = "tcp"
  from_port         = var.admin_port
  to_port           = var.admin_port
  cidr_ipv4         = each.value

  tags = var.tags
}

resource "aws_vpc_security_group_egress_rule" "https" {
  for_each = toset(var.appliance_https_egress_cidrs)

  security_group_id = aws_security_group.appliance.id
  description       = "HTTPS to S3, STS, EKS API servers (and SSM when enabled)"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = each.value

  tags = var.tags
}

# The S3 gateway endpoint's addresses are a managed prefix list, not covered by a CIDR list
# that excludes the internet.
resource "aws_vpc_security_group_egress_rule" "s3" {
  security_group_id = aws_security_group.appliance.id
  description       = "HTTPS to S3 through the gateway endpoint"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  prefix_list_id    = aws_vpc_endpoint.s3.prefix_list_id

  tags = var.tags
}

# ---------------------------------------------------------------------------------------------
# Instance role: read its own config and release, describe the EKS clusters it watches.
# Nothing else: the EKS bearer token is a presigned sts:GetCallerIdentity URL, which needs no
# IAM permission; what it may read inside Kubernetes is granted in the cluster: its access
# entry makes the role a member of labelwall-readers, which appliance/kubernetes/rbac.yaml binds.
# ---------------------------------------------------------------------------------------------

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "appliance" {
  name                 = "${var.name}-appliance"
  description          = "labelwall appliances of ${var.name}: config, release, EKS describe"
  assume_role_policy   = data.aws_iam_policy_document.assume.json
  max_session_duration = 3600

  tags = var.tags
}

data "aws_iam_policy_document" "appliance" {
  statement {
    sid       = "ReadBundles"
    actions   = ["s3:GetObject"]
    resources = [local.bundle_objects_arn]
  }

  # The pointers: which bundle each channel runs. Read only; labelwall-rollout, run by an
  # operator or CI with its own credentials, is what moves them.
  statement {
    sid       = "ReadBundlePointers"
    actions   = ["ssm:GetParameter"]
    resources = [for p in aws_ssm_parameter.bundle : p.arn]
  }

  # The CloudWatch agent ships the flow log and the journal into these two groups only; the
  # groups are created here (with their retention), so the agent needs no logs:CreateLogGroup.
  statement {
    sid       = "ShipLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = ["${aws_cloudwatch_log_group.flows.arn}:*", "${aws_cloudwatch_log_group.journal.arn}:*"]
  }

  dynamic "statement" {
    for_each = local.release_from_s3 ? [local.release_object_arn] : []

    content {
      sid       = "ReadRelease"
      actions   = ["s3:GetObject"]
      resources = [statement.value]
    }
  }

  dynamic "statement" {
    for_each = length(local.eks_cluster_arns) > 0 ? [local.eks_cluster_arns] : []

    content {
      sid       = "DescribeWatchedClusters"
      actions   = ["eks:DescribeCluster"]
      resources = statement.value
    }
  }

  # Clusters in other accounts are described through a role there (kubernetes_clusters[]
  # .describe_role_arn); the token itself is still made with this instance role.
  dynamic "statement" {
    for_each = length(local.describe_role_arns) > 0 ? [local.describe_role_arns] : []

    content {
      sid       = "DescribeClustersOfOtherAccounts"
      actions   = ["sts:AssumeRole"]
      resources = statement.value
    }
  }

  dynamic "statement" {
    for_each = var.config_kms_key_arn == null ? [] : [var.config_kms_key_arn]

    content {
      sid       = "DecryptConfigThroughS3"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]

      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["s3.${data.aws_region.current.name}.amazonaws.com"]
      }
    }
  }
}

resource "aws_iam_role_policy" "appliance" {
  name   = "labelwall"
  role   = aws_iam_role.appliance.id
  policy = data.aws_iam_policy_document.appliance.json
}

resource "aws_iam_role_policy_attachment" "ssm" {
  count = var.enable_ssm_session_manager ? 1 : 0

  role       = aws_iam_role.appliance.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "appliance" {
  name = "${var.name}-appliance"
  role = aws_iam_role.appliance.name

  tags = var.tags
}

# ---------------------------------------------------------------------------------------------
# Launch template and autoscaling group
# ---------------------------------------------------------------------------------------------

# One launch template per channel: they differ only in which bundle pointer the appliance
# follows (user data), so an instance refresh of either group changes nothing else.
resource "aws_launch_template" "appliance" {
  for_each = toset(local.channels)

  name_prefix            = "${var.name}-${each.key}-"
  description            = "labelwall appliance, ${each.key} channel (release sha256 ${substr(var.release_sha256, 0, 12)})"
  image_id               = local.ami_id
  instance_type          = var.instance_type
  update_default_version = true
  user_data              = base64encode(local.user_data[each.key])

  iam_instance_profile {
    arn = aws_iam_instance_profile.appliance.arn
  }

  network_interfaces {
    device_index                = 0
    associate_public_ip_address = false
    delete_on_termination       = true
    security_groups             = [aws_security_group.appliance.id]
  }

  # IMDSv2 only, one hop: nothing but the instance itself reaches its credentials.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  block_device_mappings {
    device_name = "/dev/xvda"

    ebs {
      volume_type           = "gp3"
      volume_size           = var.root_volume_size
      encrypted             = true
      kms_key_id            = var.ebs_kms_key_arn
      delete_on_termination = true
    }
  }

  monitoring {
    enabled = var.detailed_monitoring
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(var.tags, { Name = "${var.name}-labelwall-${each.key}", "labelwall/channel" = each.key })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(var.tags, { Name = "${var.name}-labelwall-${each.key}" })
  }

  tags = var.tags

  lifecycle {
    create_before_destroy = true
  }
}

locals {
  # Shared by the fleet and the canary groups.
  refresh_alarms = concat(
    [for a in aws_cloudwatch_metric_alarm.zone_healthy_hosts : a.alarm_name],
    [aws_cloudwatch_metric_alarm.unhealthy_hosts.alarm_name],
  )
}

resource "aws_autoscaling_group" "appliance" {
  name                = "${var.name}-labelwall"
  vpc_zone_identifier = [for s in aws_subnet.appliance : s.id]
  min_size            = var.min_size
  max_size            = var.max_size
  desired_capacity    = coalesce(var.desired_capacity, var.min_size)
  target_group_arns   = [aws_lb_target_group.this.arn]

  # ELB health: an instance whose /readyz keeps failing is replaced, not just taken out of
  # rotation. The grace period covers cloud-init plus the first label-source sync.
  health_check_type         = "ELB"
  health_check_grace_period = var.health_check_grace_period
  default_instance_warmup   = var.instance_warmup

  # Scale-in and refresh go through deregistration: the group waits deregistration_delay
  # for GWLB to drain (or, with rebalance, move) the instance's flows before terminating it.
  termination_policies      = ["OldestLaunchTemplate", "OldestInstance"]
  wait_for_capacity_timeout = "15m"

  launch_template {
    id      = aws_launch_template.appliance["fleet"].id
    version = aws_launch_template.appliance["fleet"].latest_version
  }

  # Replacements of unhealthy or rebalanced instances launch first and terminate the old
  # instance only once the new one is in service: a zone never drops below its count while
  # the old instance waits out its deregistration delay.
  instance_maintenance_policy {
    min_healthy_percentage = 100
    max_healthy_percentage = 200
  }

  instance_refresh {
    strategy = "Rolling"

    preferences {
      min_healthy_percentage = var.instance_refresh_min_healthy_percentage
      max_healthy_percentage = var.instance_refresh_max_healthy_percentage
      instance_warmup        = var.instance_warmup
      skip_matching          = true
      auto_rollback          = true

      # A refresh that takes a zone below its count, or leaves a target unhealthy, stops and
      # rolls back by itself (alarms.tf).
      alarm_specification {
        alarms = local.refresh_alarms
      }
    }
  }

  dynamic "tag" {
    for_each = merge(var.tags, { Name = "${var.name}-labelwall" })

    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = false
    }
  }

  lifecycle {
    # The target tracking policy owns the fleet's size once it exists: an apply must not
    # shrink a fleet that scaled out for load.
    ignore_changes = [desired_capacity]
  }

  depends_on = [
    # The instances need their NAT path and S3 endpoint at boot, and the listener so that the
    # health checks start as soon as they are registered.
    aws_route.appliance_default,
    aws_vpc_endpoint.s3,
    aws_vpc_endpoint.logs,
    aws_lb_listener.this,
    aws_iam_role_policy.appliance,
  ]
}

# Keeps the fleet's average CPU (or packets in) per appliance at the target: scale out before
# appliances saturate, scale in (through deregistration) when the load is gone.
resource "aws_autoscaling_policy" "appliance" {
  name                      = "${var.name}-labelwall-${var.autoscaling_metric}"
  autoscaling_group_name    = aws_autoscaling_group.appliance.name
  policy_type               = "TargetTrackingScaling"
  estimated_instance_warmup = var.instance_warmup

  target_tracking_configuration {
    target_value = var.autoscaling_target

    dynamic "predefined_metric_specification" {
      for_each = var.autoscaling_metric == "cpu" ? [1] : []

      content {
        predefined_metric_type = "ASGAverageCPUUtilization"
      }
    }

    dynamic "customized_metric_specification" {
      for_each = var.autoscaling_metric == "packets" ? [1] : []

      content {
        namespace   = "AWS/EC2"
        metric_name = "NetworkPacketsIn"
        statistic   = "Average"

        metric_dimension {
          name  = "AutoScalingGroupName"
          value = aws_autoscaling_group.appliance.name
        }
      }
    }
  }
}

# The canaries: one group per zone with exactly one appliance, in the same target group. They
# take real traffic (a zone's share divided among its appliances) with the canary bundle; a
# canary that fails its health check is replaced like any appliance.
resource "aws_autoscaling_group" "canary" {
  for_each = var.canary_enabled ? aws_subnet.appliance : {}

  name                = "${var.name}-canary-${each.key}"
  vpc_zone_identifier = [each.value.id]
  min_size            = 1
  max_size            = 2
  desired_capacity    = 1
  target_group_arns   = [aws_lb_target_group.this.arn]

  health_check_type         = "ELB"
  health_check_grace_period = var.health_check_grace_period
  default_instance_warmup   = var.instance_warmup
  wait_for_capacity_timeout = "15m"

  launch_template {
    id      = aws_launch_template.appliance["canary"].id
    version = aws_launch_template.appliance["canary"].latest_version
  }

  instance_maintenance_policy {
    min_healthy_percentage = 100
    max_healthy_percentage = 200
  }

  instance_refresh {
    strategy = "Rolling"

    preferences {
      min_healthy_percentage = 100
      max_healthy_percentage = 200
      instance_warmup        = var.instance_warmup
      skip_matching          = true
      auto_rollback          = true

      alarm_specification {
        alarms = local.refresh_alarms
      }
    }
  }

  dynamic "tag" {
    for_each = merge(var.tags, { Name = "${var.name}-labelwall-canary" })

    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = false
    }
  }

  depends_on = [
    aws_route.appliance_default,
    aws_vpc_endpoint.s3,
    aws_vpc_endpoint.logs,
    aws_lb_listener.this,
    aws_iam_role_policy.appliance,
  ]
}
