# Gateway Load Balancer, its GENEVE target group and the endpoint service consumers attach to.
# The settings here are the ones that break inspection in production when they are wrong; the
# tests in tests/ pin every one of them.

locals {
  # GENEVE is fixed by GWLB: UDP 6081, protocol GENEVE. Not a variable on purpose.
  geneve_port = 6081

  stickiness_type = {
    "5_tuple" = null
    "3_tuple" = "source_ip_dest_ip_proto"
    "2_tuple" = "source_ip_dest_ip"
  }[var.stickiness]
}

resource "aws_lb" "this" {
  # Cross-zone is a variable, off by default on purpose: it keeps each zone's flows on that
  # zone's appliances (failure isolation, no inter-zone data charges). Operators who prefer
  # surviving a zone without healthy appliances set cross_zone_load_balancing = true.
  #checkov:skip=CKV_AWS_152:cross-zone load balancing is the operator's choice (variable cross_zone_load_balancing), off by default for zonal isolation
  name                             = "${var.name}-gwlb"
  load_balancer_type               = "gateway"
  subnets                          = [for s in aws_subnet.gwlb : s.id]
  enable_cross_zone_load_balancing = var.cross_zone_load_balancing
  enable_deletion_protection       = var.deletion_protection

  tags = merge(var.tags, { Name = "${var.name}-gwlb" })
}

resource "aws_lb_target_group" "this" {
  name        = "${var.name}-geneve"
  vpc_id      = aws_vpc.this.id
  target_type = "instance"
  protocol    = "GENEVE"
  port        = local.geneve_port

  deregistration_delay = var.deregistration_delay

  # labelwall answers /readyz with 200 only when policy is loaded, every label source has
  # synced once and every data-plane worker runs: exactly "can take new flows".
  health_check {
    enabled             = true
    protocol            = "HTTP"
    port                = tostring(var.admin_port)
    path                = "/readyz"
    matcher             = "200"
    interval            = var.health_check_interval
    timeout             = var.health_check_timeout
    healthy_threshold   = var.health_check_healthy_threshold
    unhealthy_threshold = var.health_check_unhealthy_threshold
  }

  # AWS rejects differing values; one variable makes it impossible to get wrong.
  target_failover {
    on_deregistration = var.target_failover
    on_unhealthy      = var.target_failover
  }

  dynamic "stickiness" {
    for_each = local.stickiness_type == null ? [] : [local.stickiness_type]

    content {
      enabled = true
      type    = stickiness.value
    }
  }

  tags = merge(var.tags, { Name = "${var.name}-geneve" })
}

resource "aws_lb_listener" "this" {
  # A GWLB listener has no protocol or port (it takes all IP traffic); TLS does not apply.
  #checkov:skip=CKV_AWS_2:GWLB listeners carry every IP packet and have no protocol; HTTPS does not apply
  load_balancer_arn = aws_lb.this.arn

  # Only settable with 5-tuple stickiness (validated on the variable); labelwall's TCP flow
  # timeout must not exceed it.
  tcp_idle_timeout_seconds = var.tcp_idle_timeout

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this.arn
  }

  tags = merge(var.tags, { Name = "${var.name}-gwlb" })
}

resource "aws_vpc_endpoint_service" "this" {
  # Who may connect is already restricted to allowed_principals ('*' is rejected by the
  # variable's validation); manual acceptance is available with
  # endpoint_service_acceptance_required = true for services shared with other teams.
  #checkov:skip=CKV_AWS_123:access is limited to endpoint_service_allowed_principals; manual acceptance is a variable
  gateway_load_balancer_arns = [aws_lb.this.arn]
  acceptance_required        = var.endpoint_service_acceptance_required
  allowed_principals         = var.endpoint_service_allowed_principals

  tags = merge(var.tags, { Name = "${var.name}-inspection" })
}
