# Offline tests of the consumer side (mocked AWS provider). What breaks inspection here is
# asymmetric routing: an endpoint spanning zones, a workload subnet routed to another zone's
# endpoint, or return traffic that skips the endpoint.

mock_provider "aws" {
  # An IPv4-only consumer VPC; the dual-stack case overrides it.
  mock_data "aws_vpc" {
    defaults = {
      ipv6_cidr_block = ""
    }
  }
}

variables {
  name         = "eks-egress"
  vpc_id       = "vpc-0123456789abcdef0"
  service_name = "com.amazonaws.vpce.eu-west-1.vpce-svc-0123456789abcdef0"
  zones = {
    "euw1-az1" = {
      endpoint_subnet_cidr   = "10.0.250.0/28"
      source_cidrs           = ["10.0.16.0/20"]
      source_route_table_ids = ["rtb-pods-a"]
      nat_gateway_id         = "nat-a"
    }
    "euw1-az2" = {
      endpoint_subnet_cidr   = "10.0.250.16/28"
      source_cidrs           = ["10.0.32.0/20"]
      source_route_table_ids = ["rtb-pods-b"]
      nat_gateway_id         = "nat-b"
    }
  }
  inspected_destination_cidrs = ["0.0.0.0/0", "10.0.200.0/23"]
  nat_destination_cidrs       = ["0.0.0.0/0"]
  return_route_tables = [
    { route_table_id = "rtb-nat", for_destinations = ["0.0.0.0/0"] },
    { route_table_id = "rtb-db", for_destinations = ["10.0.200.0/23"] },
  ]
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
    condition     = alltrue([for az, s in aws_subnet.endpoint : s.availability_zone_id == az])
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
    condition     = aws_route.source["euw1-az1|0|0.0.0.0/0"].vpc_endpoint_id == aws_vpc_endpoint.this["euw1-az1"].id && aws_route.source["euw1-az2|0|10.0.200.0/23"].vpc_endpoint_id == aws_vpc_endpoint.this["euw1-az2"].id
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
    condition     = aws_route.return["euw1-az1|0|10.0.16.0/20"].vpc_endpoint_id == aws_vpc_endpoint.this["euw1-az1"].id && aws_route.return["euw1-az2|1|10.0.32.0/20"].vpc_endpoint_id == aws_vpc_endpoint.this["euw1-az2"].id
    error_message = "Return traffic to a workload CIDR must go to the endpoint of that workload's zone."
  }

  assert {
    condition     = aws_route.nat["euw1-az1|0.0.0.0/0"].nat_gateway_id == "nat-a" && aws_route.nat["euw1-az2|0.0.0.0/0"].route_table_id == aws_route_table.endpoint["euw1-az2"].id
    error_message = "After inspection, egress must leave through the same zone's NAT gateway."
  }
}

run "shared_route_table_across_zones_is_rejected" {
  command = plan

  variables {
    zones = {
      "euw1-az1" = {
        endpoint_subnet_cidr   = "10.0.250.0/28"
        source_cidrs           = ["10.0.16.0/20"]
        source_route_table_ids = ["rtb-shared"]
        nat_gateway_id         = "nat-a"
      }
      "euw1-az2" = {
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
      "euw1-az1" = {
        endpoint_subnet_cidr   = "10.0.250.0/28"
        source_cidrs           = ["10.0.16.0/20"]
        source_route_table_ids = ["rtb-pods-a"]
      }
    }
  }

  expect_failures = [aws_route.nat]
}

# --- issue 16: no destination without a return path, zones by ID, IPv4 only ------------------

run "a_destination_without_a_return_table_is_refused" {
  command = plan

  variables {
    # The database subnets are inspected on the way there, but no table brings replies back.
    return_route_tables = [
      { route_table_id = "rtb-nat", for_destinations = ["0.0.0.0/0"] },
    ]
  }

  expect_failures = [aws_vpc_endpoint.this]
}

run "forgetting_every_return_table_is_refused" {
  command = plan

  variables {
    return_route_tables = []
  }

  expect_failures = [aws_vpc_endpoint.this]
}

run "a_return_table_for_an_uninspected_destination_is_refused" {
  command = plan

  variables {
    return_route_tables = [
      { route_table_id = "rtb-nat", for_destinations = ["0.0.0.0/0"] },
      { route_table_id = "rtb-db", for_destinations = ["10.0.200.0/23", "10.9.0.0/16"] },
    ]
  }

  expect_failures = [var.return_route_tables]
}

run "every_return_route_goes_to_the_source_zones_endpoint_and_nowhere_else" {
  command = apply

  assert {
    condition     = toset(keys(output.return_routes)) == toset(["rtb-nat", "rtb-db"])
    error_message = "Exactly the tables where replies enter may carry return routes."
  }

  assert {
    condition = alltrue([for rt, routes in output.return_routes :
      routes == { "10.0.16.0/20" = aws_vpc_endpoint.this["euw1-az1"].id, "10.0.32.0/20" = aws_vpc_endpoint.this["euw1-az2"].id }
    ])
    error_message = "Each return table must send every zone's workload CIDR to that zone's endpoint."
  }
}

run "replies_through_the_source_tables_need_the_sources_inspected" {
  command = plan

  variables {
    inspected_destination_cidrs     = ["10.20.0.0/16"]
    nat_destination_cidrs           = []
    return_route_tables             = []
    replies_via_source_route_tables = ["10.20.0.0/16"]
  }

  expect_failures = [aws_vpc_endpoint.this]
}

run "zone_names_are_refused" {
  command = plan

  variables {
    zones = {
      "eu-west-1a" = {
        endpoint_subnet_cidr   = "10.0.250.0/28"
        source_cidrs           = ["10.0.16.0/20"]
        source_route_table_ids = ["rtb-pods-a"]
        nat_gateway_id         = "nat-a"
      }
    }
  }

  expect_failures = [var.zones]
}

run "endpoint_subnets_are_placed_by_zone_id" {
  command = apply

  assert {
    condition     = alltrue([for id, s in aws_subnet.endpoint : s.availability_zone_id == id])
    error_message = "Endpoint subnets must be placed by zone ID."
  }
}

run "ipv6_destinations_are_refused" {
  command = plan

  variables {
    inspected_destination_cidrs = ["0.0.0.0/0", "::/0"]
    return_route_tables = [
      { route_table_id = "rtb-nat", for_destinations = ["0.0.0.0/0", "::/0"] },
    ]
  }

  expect_failures = [var.inspected_destination_cidrs]
}

run "a_dual_stack_vpc_is_refused" {
  command = plan

  override_data {
    target = data.aws_vpc.consumer
    values = {
      ipv6_cidr_block = "2600:1f18:abcd:1200::/56"
    }
  }

  expect_failures = [aws_subnet.endpoint]
}
