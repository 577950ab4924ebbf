# Logs leave the instance: the CloudWatch agent (appliance/cloudwatch/) ships the flow log and
# the journal of the labelwall units into these groups, through an interface endpoint so that
# the audit trail does not depend on the NAT path. What is on local disk dies with the instance
# at every scale-in or refresh; what is here stays for log_retention_days.

resource "aws_cloudwatch_log_group" "flows" {
  #checkov:skip=CKV_AWS_158:encrypted with log_kms_key_arn when the operator gives one; CloudWatch Logs encrypts at rest otherwise
  name              = "/labelwall/${var.name}/flows"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.log_kms_key_arn

  tags = var.tags
}

resource "aws_cloudwatch_log_group" "journal" {
  #checkov:skip=CKV_AWS_158:encrypted with log_kms_key_arn when the operator gives one; CloudWatch Logs encrypts at rest otherwise
  name              = "/labelwall/${var.name}/journal"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.log_kms_key_arn

  tags = var.tags
}

resource "aws_security_group" "endpoints" {
  name        = "${var.name}-endpoints"
  description = "Interface endpoints of the inspection VPC: HTTPS from the appliances only"
  vpc_id      = aws_vpc.this.id

  tags = merge(var.tags, { Name = "${var.name}-endpoints" })
}

resource "aws_vpc_security_group_ingress_rule" "endpoints_https" {
  security_group_id            = aws_security_group.endpoints.id
  description                  = "HTTPS from the labelwall appliances"
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  referenced_security_group_id = aws_security_group.appliance.id

  tags = var.tags
}

resource "aws_vpc_security_group_egress_rule" "appliance_to_endpoints" {
  security_group_id            = aws_security_group.appliance.id
  description                  = "HTTPS to the inspection VPC's interface endpoints (CloudWatch Logs)"
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  referenced_security_group_id = aws_security_group.endpoints.id

  tags = var.tags
}

resource "aws_vpc_endpoint" "logs" {
  vpc_id              = aws_vpc.this.id
  service_name        = "com.amazonaws.${data.aws_region.current.name}.logs"
  vpc_endpoint_type   = "Interface"
  subnet_ids          = [for s in aws_subnet.appliance : s.id]
  security_group_ids  = [aws_security_group.endpoints.id]
  private_dns_enabled = true

  tags = merge(var.tags, { Name = "${var.name}-logs" })
}
