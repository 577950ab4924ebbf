# Offline tests of what a production deployment needs beyond the GWLB basics (issue 16):
# zones that survive an appliance failure, launch-before-terminate and target tracking, the
# canary channel and its pointers, alarms wired into the instance refresh, logs shipped off the
# instance, clusters of other accounts, zones by ID and the listener's idle timeout reaching
# labelwall. Mocked AWS provider: nothing is created, no credentials.

mock_provider "aws" {
  mock_data "aws_availability_zones" {
    defaults = {
      names    = ["eu-west-1a", "eu-west-1b"]
      zone_ids = ["euw1-az1", "euw1-az2"]
    }
  }

  mock_data "aws_region" {
    defaults = {
      name = "eu-west-1"
    }
  }

  mock_data "aws_partition" {
    defaults = {
      partition = "aws"
    }
  }

  mock_data "aws_caller_identity" {
    defaults = {
      account_id = "123456789012"
    }
  }

  mock_data "aws_iam_policy_document" {
    defaults = {
      json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}"
    }
  }

  mock_data "aws_ssm_parameter" {
    defaults = {
      value = "ami-0123456789abcdef0"
    }
  }

  mock_resource "aws_lb" {
    defaults = {
      arn = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/gwy/lw-gwlb/0123456789abcdef"
    }
  }

  mock_resource "aws_lb_target_group" {
    defaults = {
      arn = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/lw-geneve/0123456789abcdef"
    }
  }

  mock_resource "aws_launch_template" {
    defaults = {
      id             = "lt-0123456789abcdef0"
      latest_version = 1
    }
  }

  mock_resource "aws_iam_role" {
    defaults = {
      arn = "arn:aws:iam::123456789012:role/lw-appliance"
    }
  }

  mock_resource "aws_iam_instance_profile" {
    defaults = {
      arn = "arn:aws:iam::123456789012:instance-profile/lw-appliance"
    }
  }
}

variables {
  name                                = "lw"
  availability_zone_ids               = ["euw1-az1", "euw1-az2"]
  endpoint_service_allowed_principals = ["arn:aws:iam::123456789012:root"]
  release_url                         = "s3://lw-artifacts/releases/labelwall-0.1.0-x86_64-linux.tar.gz"
  release_sha256                      = "0000000000000000000000000000000000000000000000000000000000000000"
  config_s3_uri                       = "s3://lw-config/labelwall/"
  initial_bundle_id                   = "1111111111111111111111111111111111111111111111111111111111111111"
  kubernetes_clusters = [
    { cluster = "eks-prod", eks_cluster_name = "prod" },
  ]
}

# --- 1. zone safety --------------------------------------------------------------------------

run "three_zones_and_two_appliances_are_refused" {
  command = plan

  variables {
    availability_zone_ids = ["euw1-az1", "euw1-az2", "euw1-az3"]
    min_size              = 2
    max_size              = 6
  }

  override_data {
    target = data.aws_availability_zones.selected
    values = {
      names    = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
      zone_ids = ["euw1-az1", "euw1-az2", "euw1-az3"]
    }
  }

  expect_failures = [var.min_size]
}

run "one_appliance_per_zone_is_refused_without_cross_zone" {
  command = plan

  variables {
    min_size = 3
  }

  expect_failures = [var.min_size]
}

run "one_appliance_per_zone_is_accepted_with_cross_zone" {
  command = plan

  variables {
    min_size                  = 2
    cross_zone_load_balancing = true
  }

  assert {
    condition     = aws_lb.this.enable_cross_zone_load_balancing == true && aws_autoscaling_group.appliance.min_size == 2
    error_message = "Two appliances over two zones are fine once cross-zone load balancing is on."
  }
}

run "the_default_fleet_has_two_appliances_per_zone" {
  command = plan

  assert {
    condition     = aws_autoscaling_group.appliance.min_size >= 2 * length(var.availability_zone_ids) && aws_autoscaling_group.appliance.desired_capacity == aws_autoscaling_group.appliance.min_size
    error_message = "By default each zone must start with two fleet appliances."
  }
}

run "replacements_launch_before_terminating_and_capacity_follows_load" {
  command = apply

  assert {
    condition     = aws_autoscaling_group.appliance.instance_maintenance_policy[0].min_healthy_percentage == 100 && aws_autoscaling_group.appliance.instance_maintenance_policy[0].max_healthy_percentage > 100
    error_message = "The fleet must launch a replacement before terminating the instance it replaces (instance_maintenance_policy 100/200)."
  }

  assert {
    condition     = alltrue([for g in aws_autoscaling_group.canary : g.instance_maintenance_policy[0].min_healthy_percentage == 100])
    error_message = "Canaries must also launch before terminate."
  }

  assert {
    condition     = aws_autoscaling_policy.appliance.policy_type == "TargetTrackingScaling" && aws_autoscaling_policy.appliance.autoscaling_group_name == aws_autoscaling_group.appliance.name
    error_message = "The fleet needs a target tracking policy."
  }

  assert {
    condition     = aws_autoscaling_policy.appliance.target_tracking_configuration[0].predefined_metric_specification[0].predefined_metric_type == "ASGAverageCPUUtilization" && aws_autoscaling_policy.appliance.target_tracking_configuration[0].target_value == 50
    error_message = "By default the fleet tracks 50% average CPU."
  }
}

run "packets_tracking_uses_network_packets_in" {
  command = apply

  variables {
    autoscaling_metric = "packets"
    autoscaling_target = 3000000
  }

  assert {
    condition     = aws_autoscaling_policy.appliance.target_tracking_configuration[0].customized_metric_specification[0].metric_name == "NetworkPacketsIn" && length(aws_autoscaling_policy.appliance.target_tracking_configuration[0].predefined_metric_specification) == 0
    error_message = "autoscaling_metric = packets must track NetworkPacketsIn."
  }
}

run "packets_tracking_needs_detailed_monitoring" {
  command = plan

  variables {
    autoscaling_metric  = "packets"
    autoscaling_target  = 3000000
    detailed_monitoring = false
  }

  expect_failures = [var.autoscaling_target]
}

# --- 4. staged rollout: pointers and the canary channel --------------------------------------

run "one_canary_per_zone_follows_the_canary_pointer" {
  command = apply

  assert {
    condition     = toset(keys(aws_autoscaling_group.canary)) == toset(var.availability_zone_ids) && alltrue([for id, g in aws_autoscaling_group.canary : g.min_size == 1 && g.desired_capacity == 1 && g.vpc_zone_identifier == toset([aws_subnet.appliance[id].id])])
    error_message = "There must be exactly one canary appliance in each zone's appliance subnet."
  }

  assert {
    condition     = alltrue([for g in aws_autoscaling_group.canary : g.target_group_arns == toset([aws_lb_target_group.this.arn]) && g.health_check_type == "ELB"])
    error_message = "Canaries must take real traffic from the same target group, with ELB health checks."
  }

  assert {
    condition     = aws_ssm_parameter.bundle["fleet"].name == "/labelwall/lw/bundle/fleet" && aws_ssm_parameter.bundle["canary"].name == "/labelwall/lw/bundle/canary" && alltrue([for p in aws_ssm_parameter.bundle : p.value == var.initial_bundle_id])
    error_message = "Both pointers must exist and start at initial_bundle_id."
  }

  assert {
    condition     = strcontains(base64decode(aws_launch_template.appliance["canary"].user_data), "LABELWALL_BUNDLE_PARAMETER=/labelwall/lw/bundle/canary") && strcontains(base64decode(aws_launch_template.appliance["fleet"].user_data), "LABELWALL_BUNDLE_PARAMETER=/labelwall/lw/bundle/fleet")
    error_message = "Canaries must follow the canary pointer and the fleet the fleet pointer."
  }

  assert {
    condition     = aws_autoscaling_group.appliance.launch_template[0].id == aws_launch_template.appliance["fleet"].id && alltrue([for g in aws_autoscaling_group.canary : g.launch_template[0].id == aws_launch_template.appliance["canary"].id])
    error_message = "Each group must launch its own channel's template."
  }

  assert {
    condition     = replace(replace(base64decode(aws_launch_template.appliance["canary"].user_data), "canary", "CHANNEL"), "fleet", "CHANNEL") == replace(replace(base64decode(aws_launch_template.appliance["fleet"].user_data), "canary", "CHANNEL"), "fleet", "CHANNEL")
    error_message = "The two channels' user data must differ only in the channel."
  }
}

run "without_canaries_everything_follows_the_fleet_pointer" {
  command = apply

  variables {
    canary_enabled = false
  }

  assert {
    condition     = length(aws_autoscaling_group.canary) == 0 && keys(aws_launch_template.appliance) == ["fleet"]
    error_message = "canary_enabled = false must create no canary group."
  }
}

run "a_bundle_id_that_is_not_a_sha256_is_refused" {
  command = plan

  variables {
    initial_bundle_id = "latest"
  }

  expect_failures = [var.initial_bundle_id]
}

# --- 5. alarms and logs ----------------------------------------------------------------------

run "alarms_watch_every_zone_and_stop_the_instance_refresh" {
  command = apply

  assert {
    condition     = toset(keys(aws_cloudwatch_metric_alarm.zone_healthy_hosts)) == toset(var.availability_zone_ids)
    error_message = "There must be a HealthyHostCount alarm per zone."
  }

  assert {
    condition = alltrue([for id, a in aws_cloudwatch_metric_alarm.zone_healthy_hosts :
      a.namespace == "AWS/GatewayELB" && a.metric_name == "HealthyHostCount" && a.comparison_operator == "LessThanThreshold" && a.threshold == 3 && a.treat_missing_data == "breaching"
      && a.dimensions["AvailabilityZone"] == { "euw1-az1" = "eu-west-1a", "euw1-az2" = "eu-west-1b" }[id]
      && a.dimensions["TargetGroup"] == aws_lb_target_group.this.arn_suffix && a.dimensions["LoadBalancer"] == aws_lb.this.arn_suffix
    ])
    error_message = "Each zone's alarm must fire below its built count (2 fleet + 1 canary), on its own zone's name, for this GWLB and target group, and treat missing data as breaching."
  }

  assert {
    condition     = aws_cloudwatch_metric_alarm.unhealthy_hosts.metric_name == "UnHealthyHostCount" && aws_cloudwatch_metric_alarm.unhealthy_hosts.threshold == 0 && aws_cloudwatch_metric_alarm.unhealthy_hosts.comparison_operator == "GreaterThanThreshold"
    error_message = "Any unhealthy target must raise an alarm."
  }

  assert {
    condition = toset(aws_autoscaling_group.appliance.instance_refresh[0].preferences[0].alarm_specification[0].alarms) == toset(concat(
      [for a in aws_cloudwatch_metric_alarm.zone_healthy_hosts : a.alarm_name], [aws_cloudwatch_metric_alarm.unhealthy_hosts.alarm_name]
    )) && aws_autoscaling_group.appliance.instance_refresh[0].preferences[0].auto_rollback
    error_message = "The instance refresh must stop and roll back on every alarm."
  }

  assert {
    condition     = alltrue([for g in aws_autoscaling_group.canary : length(g.instance_refresh[0].preferences[0].alarm_specification[0].alarms) == 3])
    error_message = "The canaries' instance refresh must watch the same alarms."
  }
}

run "logs_are_shipped_off_the_instance" {
  command = apply

  variables {
    log_retention_days = 90
  }

  assert {
    condition     = aws_cloudwatch_log_group.flows.retention_in_days == 90 && aws_cloudwatch_log_group.journal.retention_in_days == 90
    error_message = "Both log groups must keep logs for log_retention_days."
  }

  assert {
    condition     = aws_vpc_endpoint.logs.vpc_endpoint_type == "Interface" && aws_vpc_endpoint.logs.service_name == "com.amazonaws.eu-west-1.logs" && aws_vpc_endpoint.logs.private_dns_enabled && aws_vpc_endpoint.logs.subnet_ids == toset([for s in aws_subnet.appliance : s.id])
    error_message = "CloudWatch Logs must be reached through an interface endpoint in the appliance subnets."
  }

  assert {
    condition = [
      for f in jsondecode(trimspace([
        for f in yamldecode(base64decode(aws_launch_template.appliance["fleet"].user_data)).write_files :
        f.content if f.path == "/opt/aws/amazon-cloudwatch-agent/etc/labelwall.json"
      ][0])).logs.logs_collected.files.collect_list : [f.file_path, f.log_group_name]
      ] == [
      ["/var/log/labelwall/flows.jsonl", "/labelwall/lw/flows"],
      ["/var/log/labelwall-journal/journal.log", "/labelwall/lw/journal"],
      ["/var/log/cloud-init-output.log", "/labelwall/lw/journal"],
    ]
    error_message = "The CloudWatch agent must ship the flow log to the flows group and the journal and first-boot log to the journal group."
  }

  assert {
    condition     = strcontains(base64decode(aws_launch_template.appliance["fleet"].user_data), "systemctl enable --now labelwall-journal-export.service")
    error_message = "The journal export must start at first boot."
  }
}

run "with_cross_zone_and_fewer_appliances_than_zones_the_zone_alarm_counts_only_the_canary" {
  command = plan

  variables {
    availability_zone_ids     = ["euw1-az1", "euw1-az2", "euw1-az3"]
    min_size                  = 2
    cross_zone_load_balancing = true
  }

  override_data {
    target = data.aws_availability_zones.selected
    values = {
      names    = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
      zone_ids = ["euw1-az1", "euw1-az2", "euw1-az3"]
    }
  }

  assert {
    condition     = alltrue([for a in aws_cloudwatch_metric_alarm.zone_healthy_hosts : a.threshold == 1])
    error_message = "A zone that may hold no fleet appliance must only require its canary, or the alarm blocks every refresh."
  }
}

run "retention_must_be_a_cloudwatch_value" {
  command = plan

  variables {
    log_retention_days = 100
  }

  expect_failures = [var.log_retention_days]
}

# --- 6. across accounts ----------------------------------------------------------------------

run "zone_names_are_refused" {
  command = plan

  variables {
    availability_zone_ids = ["eu-west-1a", "eu-west-1b"]
  }

  expect_failures = [var.availability_zone_ids]
}

run "subnets_are_placed_by_zone_id" {
  command = apply

  assert {
    condition     = alltrue([for id, s in aws_subnet.gwlb : s.availability_zone_id == id]) && alltrue([for id, s in aws_subnet.appliance : s.availability_zone_id == id])
    error_message = "Subnets must be placed by zone ID, which means the same zone in every account."
  }
}

run "clusters_of_other_accounts_are_described_through_their_role_or_not_at_all" {
  command = apply

  variables {
    kubernetes_clusters = [
      { cluster = "eks-prod", eks_cluster_name = "prod" },
      { cluster = "payments", eks_cluster_name = "payments", account_id = "210987654321", describe_role_arn = "arn:aws:iam::210987654321:role/labelwall-describe" },
      { cluster = "data", eks_cluster_name = "data", account_id = "333333333333", region = "eu-central-1", endpoint = "https://ABC.gr7.eu-central-1.eks.amazonaws.com", certificate_authority_data = "LS0tLS1CRUdJTg==" },
    ]
  }

  assert {
    condition     = toset(one([for s in data.aws_iam_policy_document.appliance.statement : s.resources if s.sid == "DescribeWatchedClusters"])) == toset(["arn:aws:eks:eu-west-1:123456789012:cluster/prod"])
    error_message = "Only clusters of this account without a describe role or given endpoint are described with the instance role."
  }

  assert {
    condition     = toset(one([for s in data.aws_iam_policy_document.appliance.statement : s.resources if s.sid == "DescribeClustersOfOtherAccounts"])) == toset(["arn:aws:iam::210987654321:role/labelwall-describe"]) && toset(one([for s in data.aws_iam_policy_document.appliance.statement : s.actions if s.sid == "DescribeClustersOfOtherAccounts"])) == toset(["sts:AssumeRole"])
    error_message = "The instance role may assume exactly the describe roles of other accounts."
  }

  assert {
    condition     = strcontains(base64decode(aws_launch_template.appliance["fleet"].user_data), "write_kubeconfig 'payments' 'payments' 'eu-west-1' '210987654321' 'arn:aws:iam::210987654321:role/labelwall-describe' '' ''") && strcontains(base64decode(aws_launch_template.appliance["fleet"].user_data), "write_kubeconfig 'data' 'data' 'eu-central-1' '333333333333' '' 'https://ABC.gr7.eu-central-1.eks.amazonaws.com' 'LS0tLS1CRUdJTg=='")
    error_message = "cloud-init must receive each cluster's account, describe role, endpoint and CA."
  }
}

run "endpoint_without_ca_is_refused" {
  command = plan

  variables {
    kubernetes_clusters = [
      { cluster = "data", eks_cluster_name = "data", endpoint = "https://ABC.gr7.eu-central-1.eks.amazonaws.com" },
    ]
  }

  expect_failures = [var.kubernetes_clusters]
}

# --- 7. plumbing -----------------------------------------------------------------------------

run "the_listener_idle_timeout_reaches_labelwall" {
  command = apply

  variables {
    tcp_idle_timeout = 900
  }

  assert {
    condition = aws_lb_listener.this.tcp_idle_timeout_seconds == 900 && yamldecode([
      for f in yamldecode(base64decode(aws_launch_template.appliance["fleet"].user_data)).write_files :
      f.content if f.path == "/etc/labelwall/labelwall.yaml"
    ][0]).flows.tcp_idle_timeout == 900
    error_message = "labelwall's flows.tcp_idle_timeout must be the listener's TCP idle timeout."
  }
}

run "the_default_idle_timeout_adds_no_key" {
  command = apply

  assert {
    condition = !contains(keys(yamldecode([
      for f in yamldecode(base64decode(aws_launch_template.appliance["fleet"].user_data)).write_files :
      f.content if f.path == "/etc/labelwall/labelwall.yaml"
    ][0])), "flows")
    error_message = "At GWLB's default 350 s, labelwall's default already matches: no flows key."
  }
}
