# Offline tests of the inspection VPC (mocked AWS provider: nothing is created, no credentials).
# They pin the settings that silently break GWLB inspection in production when they drift:
# GENEVE on 6081, the /readyz health check on the admin port, equal failover settings,
# security groups that admit GENEVE and health checks only from the GWLB subnets, and
# labelwall's own allowed_peers set to exactly those subnets.

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
  initial_bundle_id                   = "1111111111111111111111111111111111111111111111111111111111111111"
  endpoint_service_allowed_principals = ["arn:aws:iam::123456789012:root"]
  release_url                         = "s3://lw-artifacts/releases/labelwall-0.1.0-x86_64-linux.tar.gz"
  release_sha256                      = "0000000000000000000000000000000000000000000000000000000000000000"
  config_s3_uri                       = "s3://lw-config/labelwall/"
  scrape_cidrs                        = ["10.50.0.0/24"]
  kubernetes_clusters = [
    { cluster = "eks-prod", eks_cluster_name = "prod" },
  ]
}

run "target_group_speaks_geneve_on_6081" {
  command = apply

  assert {
    condition     = aws_lb.this.load_balancer_type == "gateway"
    error_message = "The load balancer must be a Gateway Load Balancer."
  }

  assert {
    condition     = aws_lb_target_group.this.protocol == "GENEVE" && aws_lb_target_group.this.port == 6081
    error_message = "GWLB target groups must be GENEVE on port 6081."
  }

  assert {
    condition     = aws_lb_listener.this.default_action[0].target_group_arn == aws_lb_target_group.this.arn
    error_message = "The listener must forward to the GENEVE target group."
  }

  assert {
    condition     = length(aws_lb.this.subnets) == 2 && alltrue([for s in aws_subnet.gwlb : contains(tolist(aws_lb.this.subnets), s.id)])
    error_message = "The GWLB must have one node subnet per availability zone."
  }

  assert {
    condition     = aws_vpc_endpoint_service.this.gateway_load_balancer_arns == toset([aws_lb.this.arn])
    error_message = "The endpoint service must front the GWLB."
  }

  assert {
    condition     = aws_vpc_endpoint_service.this.allowed_principals == toset(["arn:aws:iam::123456789012:root"])
    error_message = "The endpoint service must admit exactly the configured principals."
  }
}

run "health_check_asks_readyz_on_the_admin_port" {
  command = apply

  assert {
    condition     = aws_lb_target_group.this.health_check[0].protocol == "HTTP"
    error_message = "The health check must be HTTP."
  }

  assert {
    condition     = aws_lb_target_group.this.health_check[0].path == "/readyz"
    error_message = "The health check must ask /readyz (200 only when policy, labels and workers are ready)."
  }

  assert {
    condition     = aws_lb_target_group.this.health_check[0].port == "8080"
    error_message = "The health check must go to the admin port (8080 by default), not the traffic port."
  }

  assert {
    condition     = aws_lb_target_group.this.health_check[0].matcher == "200"
    error_message = "Only 200 means ready."
  }

  assert {
    condition     = strcontains(base64decode(aws_launch_template.appliance["fleet"].user_data), "listen: 0.0.0.0:8080")
    error_message = "labelwall's admin.listen must be the port the health check asks."
  }
}

run "failover_settings_are_equal" {
  command = apply

  assert {
    condition     = aws_lb_target_group.this.target_failover[0].on_deregistration == aws_lb_target_group.this.target_failover[0].on_unhealthy
    error_message = "AWS requires on_deregistration and on_unhealthy to be equal."
  }

  assert {
    condition     = aws_lb_target_group.this.target_failover[0].on_unhealthy == "rebalance"
    error_message = "The default failover must be rebalance."
  }

  assert {
    condition     = aws_lb_target_group.this.deregistration_delay == "300"
    error_message = "The default deregistration delay must be GWLB's 300 s."
  }

  assert {
    condition     = length(aws_lb_target_group.this.stickiness) == 0 && aws_lb_listener.this.tcp_idle_timeout_seconds == 350
    error_message = "Defaults must be 5-tuple stickiness and a 350 s TCP idle timeout."
  }
}

run "security_group_admits_geneve_and_health_checks_only_from_gwlb_subnets" {
  command = apply

  assert {
    condition     = toset([for r in aws_vpc_security_group_ingress_rule.geneve : r.cidr_ipv4]) == toset(values(local.gwlb_subnet_cidrs))
    error_message = "GENEVE must be admitted from exactly the GWLB subnets."
  }

  assert {
    condition     = alltrue([for r in aws_vpc_security_group_ingress_rule.geneve : r.ip_protocol == "udp" && r.from_port == 6081 && r.to_port == 6081])
    error_message = "GENEVE rules must be UDP 6081 only."
  }

  assert {
    condition     = alltrue([for r in aws_vpc_security_group_egress_rule.geneve : r.ip_protocol == "udp" && r.to_port == 6081 && contains(values(local.gwlb_subnet_cidrs), r.cidr_ipv4)])
    error_message = "Replies to GWLB must be allowed out on UDP 6081 to the GWLB subnets."
  }

  assert {
    condition     = toset([for r in aws_vpc_security_group_ingress_rule.health_check : r.cidr_ipv4]) == toset(values(local.gwlb_subnet_cidrs)) && alltrue([for r in aws_vpc_security_group_ingress_rule.health_check : r.from_port == 8080 && r.to_port == 8080])
    error_message = "Health checks must be admitted on the admin port from the GWLB subnets."
  }

  assert {
    condition     = [for r in aws_vpc_security_group_ingress_rule.scrape : r.cidr_ipv4] == ["10.50.0.0/24"]
    error_message = "Scrapers must be admitted from scrape_cidrs only."
  }
}

run "appliances_boot_with_imdsv2_and_elb_health" {
  command = apply

  assert {
    condition     = aws_launch_template.appliance["fleet"].metadata_options[0].http_tokens == "required" && aws_launch_template.appliance["fleet"].metadata_options[0].http_put_response_hop_limit == 1
    error_message = "IMDSv2 must be required, with a hop limit of 1."
  }

  assert {
    condition     = aws_launch_template.appliance["fleet"].block_device_mappings[0].ebs[0].encrypted == "true"
    error_message = "The root volume must be encrypted."
  }

  assert {
    condition     = aws_autoscaling_group.appliance.health_check_type == "ELB" && aws_autoscaling_group.appliance.target_group_arns == toset([aws_lb_target_group.this.arn])
    error_message = "The autoscaling group must register in the target group and use its health checks."
  }

  assert {
    condition     = aws_autoscaling_group.appliance.instance_refresh[0].strategy == "Rolling"
    error_message = "Launch template changes must roll out by instance refresh."
  }

  assert {
    condition     = can(yamldecode(base64decode(aws_launch_template.appliance["fleet"].user_data)))
    error_message = "The rendered cloud-init user data must be valid YAML."
  }

  assert {
    condition     = strcontains(base64decode(aws_launch_template.appliance["fleet"].user_data), "write_kubeconfig 'eks-prod' 'prod' 'eu-west-1'")
    error_message = "cloud-init must write a kubeconfig for every watched cluster."
  }

  assert {
    condition     = length(base64decode(aws_launch_template.appliance["fleet"].user_data)) < 16384
    error_message = "EC2 user data is limited to 16 KiB."
  }
}

# dataplane.allowed_peers in the labelwall.yaml cloud-init writes: exactly the CIDRs of the
# subnets the GWLB is in (its nodes' addresses), so GENEVE from anywhere else is dropped.
run "allowed_peers_are_exactly_the_gwlb_subnets" {
  command = apply

  assert {
    condition = yamldecode([
      for f in yamldecode(base64decode(aws_launch_template.appliance["fleet"].user_data)).write_files :
      f.content if f.path == "/etc/labelwall/labelwall.yaml"
    ][0]).dataplane.allowed_peers == ["10.100.0.0/24", "10.100.1.0/24"]
    error_message = "labelwall.yaml must set dataplane.allowed_peers to exactly the GWLB subnets 10.100.0.0/24 and 10.100.1.0/24."
  }

  assert {
    condition = toset(yamldecode([
      for f in yamldecode(base64decode(aws_launch_template.appliance["fleet"].user_data)).write_files :
      f.content if f.path == "/etc/labelwall/labelwall.yaml"
    ][0]).dataplane.allowed_peers) == toset([for s in aws_subnet.gwlb : s.cidr_block if contains(tolist(aws_lb.this.subnets), s.id)])
    error_message = "dataplane.allowed_peers must be the CIDR blocks of the subnets the GWLB is in."
  }
}

run "allowed_peers_follow_the_zones_and_the_vpc_cidr" {
  command = apply

  variables {
    availability_zone_ids = ["euw1-az1", "euw1-az2", "euw1-az3"]
    min_size              = 6
    vpc_cidr              = "10.20.0.0/20"
    subnet_newbits        = 6
  }

  override_data {
    target = data.aws_availability_zones.selected
    values = {
      names    = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
      zone_ids = ["euw1-az1", "euw1-az2", "euw1-az3"]
    }
  }

  assert {
    condition = yamldecode([
      for f in yamldecode(base64decode(aws_launch_template.appliance["fleet"].user_data)).write_files :
      f.content if f.path == "/etc/labelwall/labelwall.yaml"
    ][0]).dataplane.allowed_peers == ["10.20.0.0/26", "10.20.0.64/26", "10.20.0.128/26"]
    error_message = "dataplane.allowed_peers must list every zone's GWLB subnet, and only those."
  }

  assert {
    condition     = toset([for r in aws_vpc_security_group_ingress_rule.geneve : r.cidr_ipv4]) == toset(["10.20.0.0/26", "10.20.0.64/26", "10.20.0.128/26"])
    error_message = "The security group and allowed_peers must admit the same GWLB subnets."
  }
}

run "instance_role_grants_only_bundles_pointers_logs_release_and_eks_describe" {
  command = apply

  assert {
    condition     = toset(flatten([for s in data.aws_iam_policy_document.appliance.statement : s.actions])) == toset(["s3:GetObject", "ssm:GetParameter", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams", "eks:DescribeCluster"])
    error_message = "The instance role may only read bundles, the release and the pointers, write its log streams, and describe EKS clusters."
  }

  assert {
    condition = toset(flatten([for s in data.aws_iam_policy_document.appliance.statement : s.resources])) == toset(concat([
      "arn:aws:s3:::lw-config/labelwall/bundles/*",
      "arn:aws:s3:::lw-artifacts/releases/labelwall-0.1.0-x86_64-linux.tar.gz",
      "arn:aws:eks:eu-west-1:123456789012:cluster/prod",
      "${aws_cloudwatch_log_group.flows.arn}:*",
      "${aws_cloudwatch_log_group.journal.arn}:*",
    ], [for p in aws_ssm_parameter.bundle : p.arn]))
    error_message = "The instance role's resources must be exactly its bundles, its release, its pointers, its two log groups and its clusters."
  }

  assert {
    condition     = length(aws_iam_role_policy_attachment.ssm) == 0
    error_message = "Session Manager must be opt-in."
  }
}

run "custom_admin_port_and_no_rebalance_follow_everywhere" {
  command = apply

  variables {
    admin_port           = 9090
    target_failover      = "no_rebalance"
    deregistration_delay = 120
  }

  assert {
    condition     = aws_lb_target_group.this.health_check[0].port == "9090" && alltrue([for r in aws_vpc_security_group_ingress_rule.health_check : r.from_port == 9090])
    error_message = "The health check and its security group rule must follow admin_port."
  }

  assert {
    condition     = strcontains(base64decode(aws_launch_template.appliance["fleet"].user_data), "listen: 0.0.0.0:9090")
    error_message = "labelwall's admin.listen must follow admin_port."
  }

  assert {
    condition     = aws_lb_target_group.this.target_failover[0].on_deregistration == "no_rebalance" && aws_lb_target_group.this.target_failover[0].on_unhealthy == "no_rebalance"
    error_message = "Both failover settings must follow target_failover."
  }
}

run "three_tuple_stickiness" {
  command = plan

  variables {
    stickiness = "3_tuple"
  }

  assert {
    condition     = aws_lb_target_group.this.stickiness[0].type == "source_ip_dest_ip_proto" && aws_lb_target_group.this.stickiness[0].enabled
    error_message = "3_tuple stickiness must map to source_ip_dest_ip_proto."
  }
}

run "unknown_failover_value_is_rejected" {
  command = plan

  variables {
    target_failover = "failover"
  }

  expect_failures = [var.target_failover]
}

run "idle_timeout_needs_five_tuple_stickiness" {
  command = plan

  variables {
    stickiness       = "2_tuple"
    tcp_idle_timeout = 900
  }

  expect_failures = [var.tcp_idle_timeout]
}

run "admin_port_cannot_be_geneve" {
  command = plan

  variables {
    admin_port = 6081
  }

  expect_failures = [var.admin_port]
}

run "wildcard_principal_is_rejected" {
  command = plan

  variables {
    endpoint_service_allowed_principals = ["*"]
  }

  expect_failures = [var.endpoint_service_allowed_principals]
}
