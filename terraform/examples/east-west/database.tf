# rating-database: MariaDB on a small instance in the database VPC, at the address
# appliance/examples/east-west/inventory.yaml names.

resource "aws_security_group" "database" {
  name        = "${var.name}-rating-database"
  description = "rating-database: MySQL from the EKS pod subnets; labelwall decides which pods"
  vpc_id      = aws_vpc.database.id
}

resource "aws_vpc_security_group_ingress_rule" "database_mysql" {
  for_each = local.eks_private_cidrs

  security_group_id = aws_security_group.database.id
  description       = "MySQL from EKS pods in ${each.key}"
  ip_protocol       = "tcp"
  from_port         = 3306
  to_port           = 3306
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "database_s3" {
  security_group_id = aws_security_group.database.id
  description       = "Package repositories (S3, through the gateway endpoint)"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  prefix_list_id    = aws_vpc_endpoint.database_s3.prefix_list_id
}

resource "aws_instance" "rating_database" {
  #checkov:skip=CKV2_AWS_41:the test database needs no AWS permissions; no role is the least privilege
  count = var.create_test_database ? 1 : 0

  ami                    = nonsensitive(data.aws_ssm_parameter.al2023.value)
  instance_type          = "t3.micro"
  subnet_id              = aws_subnet.database[local.first_zone].id
  private_ip             = cidrhost(local.database_cidrs[local.first_zone], 10)
  vpc_security_group_ids = [aws_security_group.database.id]
  monitoring             = true
  ebs_optimized          = true

  metadata_options {
    http_endpoint = "enabled"
    http_tokens   = "required"
  }

  root_block_device {
    encrypted   = true
    volume_type = "gp3"
  }

  user_data = <<-EOT
    #!/bin/bash
    set -euo pipefail
    dnf -y install mariadb105-server
    printf '[mysqld]\nbind-address=0.0.0.0\n' > /etc/my.cnf.d/labelwall-demo.cnf
    systemctl enable --now mariadb
    mysql -e "CREATE DATABASE IF NOT EXISTS ratings"
  EOT

  tags = { Name = "${var.name}-rating-database" }

  depends_on = [aws_vpc_endpoint.database_s3]
}
