# What an operator must hear about, and what stops an instance refresh: a zone with fewer
# healthy appliances than it was built with (with cross-zone off, that zone's inspected traffic
# is one failure from stopping, or stopped), and any unhealthy target. Both are in every
# instance refresh's alarm specification, so a bad launch template rolls itself back.

locals {
  # The count each zone is built with: its share of the fleet's minimum plus its canary. With
  # cross-zone on and fewer appliances than zones a zone may hold no fleet appliance at all;
  # its share is then 0, not 1, or the alarm would fire (and block every refresh) for good.
  healthy_per_zone = floor(var.min_size / length(var.availability_zone_ids)) + (var.canary_enabled ? 1 : 0)
}

resource "aws_cloudwatch_metric_alarm" "zone_healthy_hosts" {
  for_each = local.zones

  alarm_name        = "${var.name}-healthy-hosts-${each.key}"
  alarm_description = "Fewer than ${local.healthy_per_zone} healthy labelwall appliances in ${each.key} (${local.zone_names[each.key]}). With cross-zone load balancing off this zone's inspected traffic depends on them. Runbook: docs/operations.md, section Alarms."
  namespace         = "AWS/GatewayELB"
  metric_name       = "HealthyHostCount"
  statistic         = "Minimum"
  period            = 60
  # Three minutes: longer than an unhealthy_threshold x interval flap, shorter than a refresh
  # step, so a replacement that never becomes ready stops the refresh.
  evaluation_periods  = 3
  datapoints_to_alarm = 3
  comparison_operator = "LessThanThreshold"
  threshold           = local.healthy_per_zone
  # No datapoint means no healthy target reported in the zone: that is the failure itself.
  treat_missing_data = "breaching"
  alarm_actions      = var.alarm_actions
  ok_actions         = var.alarm_actions

  dimensions = {
    LoadBalancer     = aws_lb.this.arn_suffix
    TargetGroup      = aws_lb_target_group.this.arn_suffix
    AvailabilityZone = local.zone_names[each.key]
  }

  tags = var.tags
}

resource "aws_cloudwatch_metric_alarm" "unhealthy_hosts" {
  alarm_name          = "${var.name}-unhealthy-hosts"
  alarm_description   = "A labelwall appliance fails GWLB's /readyz health check (policy not loaded, a label source never synced, or a worker down). Runbook: docs/operations.md, section Alarms."
  namespace           = "AWS/GatewayELB"
  metric_name         = "UnHealthyHostCount"
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 3
  datapoints_to_alarm = 3
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions

  dimensions = {
    LoadBalancer = aws_lb.this.arn_suffix
    TargetGroup  = aws_lb_target_group.this.arn_suffix
  }

  tags = var.tags
}
