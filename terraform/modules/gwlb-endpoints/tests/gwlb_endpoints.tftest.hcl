# Offline tests of the consumer side (mocked AWS provider). What breaks inspection here is
# asymmetric routing: an endpoint spanning zones, a workload subnet routed to another zone's
# endpoint, or return traffic that skips the endpoint.

mock_provider "aws" {}

variables {
  name         = "eks-egress"
  vpc_id       = "vpc-0123456789abcdef0"
  service_name = "com.amazonaws.vpce.eu-west-1.vpce-svc-0123456789abcdef0"
  zones = {
    "eu-west-1a" = {
      endpoint_subnet_cidr   = "10.0.250.0/28"
      source_cidrs           = ["10.0.16.0/20"]
      source_route_table_ids = ["rtb-pods-a"]
      nat_gateway_id         = "nat-a"
    }
    "eu-west-1b" = {
      endpoint_subnet_cidr   = "10.0.250.16/28"
      source_cidrs           = ["10.0.32.0/20"]
      source_route_table_ids = ["rtb-pods-b"]
      nat_gateway_id         = "nat-b"
    }
  }
  inspected_destination_cidrs = ["0.0.0.0/0", "10.0.200.0/23"]
  nat_destination_cidrs       = ["0.0.0.0/0"]
  return_route_table_ids      = ["rtb-public", "rtb-db"]
}

run "one_endpoint_per_zone_in_one_subnet" {
  command = apply

  assert {
    condition     = length(aws_vpc_endpoint.this) == 2
    error_message = "There must be one GWLB endpoint per zone."
  }

  assert {
    condition     = alltrue([for az, e in aws_vpc_endpoint.this : e.vpc_endpoint_type == "GatewayLoadBalancer" && e.service_name == var.service_name])
    error_message = "Endpoints must be GatewayLoadBalancer endpoints of the inspection service."
  }

  assert {
    condition     = alltrue([for az, e in aws_vpc_endpoint.this : length(e.subnet_ids) == 1 && contains(tolist(e.subnet_ids), aws_subnet.endpoint[az].id)])
    error_message = "Each endpoint must sit in exactly one subnet: its own zone's endpoint subnet."
  }

  assert {
    condition     = alltrue([for az, s in aws_subnet.endpoint : s.availability_zone == az])
    error_message = "Each endpoint subnet must be in its zone."
  }
}

run "workload_routes_point_at_their_own_zones_endpoint" {
  command = apply

  assert {
    condition     = length(aws_route.source) == 4
    error_message = "Every workload route table needs a route per inspected destination."
  }

  assert {
    condition = alltrue([
      for k, r in aws_route.source :
      r.vpc_endpoint_id == aws_vpc_endpoint.this[split("|", k)[0]].id
    ])
    error_message = "Workload routes must point at the endpoint of the workload's zone."
  }

  assert {
    condition     = aws_route.source["eu-west-1a|0|0.0.0.0/0"].vpc_endpoint_id == aws_vpc_endpoint.this["eu-west-1a"].id && aws_route.source["eu-west-1b|0|10.0.200.0/23"].vpc_endpoint_id == aws_vpc_endpoint.this["eu-west-1b"].id
    error_message = "Pod subnets' egress and database routes must go through the endpoints."
  }

  assert {
    condition     = alltrue([for k, r in aws_route.source : r.route_table_id == var.zones[split("|", k)[0]].source_route_table_ids[tonumber(split("|", k)[1])]])
    error_message = "Each workload route must be in a route table of its own zone."
  }

  assert {
    condition     = alltrue([for r in aws_route.source : r.nat_gateway_id == null || r.nat_gateway_id == ""])
    error_message = "Workload subnets must not bypass inspection straight to the NAT gateway."
  }
}

run "return_traffic_crosses_the_same_endpoint" {
  command = apply

  assert {
    condition     = length(aws_route.return) == 4
    error_message = "Every return route table needs a route per workload CIDR."
  }

  assert {
    condition     = aws_route.return["eu-west-1a|0|10.0.16.0/20"].vpc_endpoint_id == aws_vpc_endpoint.this["eu-west-1a"].id && aws_route.return["eu-west-1b|1|10.0.32.0/20"].vpc_endpoint_id == aws_vpc_endpoint.this["eu-west-1b"].id
    error_message = "Return traffic to a workload CIDR must go to the endpoint of that workload's zone."
  }

  assert {
    condition     = aws_route.nat["eu-west-1a|0.0.0.0/0"].nat_gateway_id == "nat-a" && aws_route.nat["eu-west-1b|0.0.0.0/0"].route_table_id == aws_route_table.endpoint["eu-west-1b"].id
    error_message = "After inspection, egress must leave through the same zone's NAT gateway."
  }
}

run "shared_route_table_across_zones_is_rejected" {
  command = plan

  variables {
    zones = {
      "eu-west-1a" = {
        endpoint_subnet_cidr   = "10.0.250.0/28"
        source_cidrs           = ["10.0.16.0/20"]
        source_route_table_ids = ["rtb-shared"]
        nat_gateway_id         = "nat-a"
      }
      "eu-west-1b" = {
        endpoint_subnet_cidr   = "10.0.250.16/28"
        source_cidrs           = ["10.0.32.0/20"]
        source_route_table_ids = ["rtb-shared"]
        nat_gateway_id         = "nat-b"
      }
    }
  }

  expect_failures = [var.zones]
}

run "nat_destination_without_nat_gateway_is_rejected" {
  command = plan

  variables {
    zones = {
      "eu-west-1a" = {
        endpoint_subnet_cidr   = "10.0.250.0/28"
        source_cidrs           = ["10.0.16.0/20"]
        source_route_table_ids = ["rtb-pods-a"]
      }
    }
  }

  expect_failures = [aws_route.nat]
}
