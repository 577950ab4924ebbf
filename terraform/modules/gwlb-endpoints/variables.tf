variable "name" {
  description = "Name prefix for the endpoint subnets, route tables and endpoints."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,38}[a-z0-9]$", var.name))
    error_message = "name must be 2-40 characters of lowercase letters, digits and '-', starting with a letter."
  }
}

variable "tags" {
  description = "Tags added to every resource this module creates."
  type        = map(string)
  default     = {}
}

variable "vpc_id" {
  description = "ID of the consumer VPC (the one whose workloads' traffic is inspected, e.g. the EKS cluster's VPC)."
  type        = string
}

variable "service_name" {
  description = "Service name of the inspection VPC's endpoint service (output endpoint_service_name of the inspection-vpc module)."
  type        = string

  validation {
    condition     = can(regex("^com\\.amazonaws\\.vpce\\.[a-z0-9-]+\\.vpce-svc-[0-9a-f]+$", var.service_name))
    error_message = "service_name must look like com.amazonaws.vpce.REGION.vpce-svc-0123456789abcdef0."
  }
}

variable "zones" {
  description = <<-EOT
    One entry per availability zone, keyed by zone ID (euw1-az1, not eu-west-1a: a zone name means a different physical zone in each account, an ID the same one), which must be a zone the GWLB is enabled in (inspection-vpc's availability_zone_ids).
    - endpoint_subnet_cidr: a small free CIDR (a /28 is enough) for the subnet that holds only this zone's GWLB endpoint.
    - source_cidrs: CIDRs of the workload (EKS pod) subnets in this zone; return traffic to them is routed back through this zone's endpoint (in every return_route_tables entry).
    - source_route_table_ids: route tables of those subnets; each gets a route per inspected_destination_cidrs entry to this zone's endpoint. Must not be shared with another zone.
    - nat_gateway_id: where inspected traffic to nat_destination_cidrs goes next (the zone's NAT gateway), or null.
    - transit_gateway_id: where inspected traffic to transit_gateway_destination_cidrs goes next, or null.
  EOT
  type = map(object({
    endpoint_subnet_cidr   = string
    source_cidrs           = list(string)
    source_route_table_ids = list(string)
    nat_gateway_id         = optional(string)
    transit_gateway_id     = optional(string)
  }))

  validation {
    condition     = length(var.zones) >= 1
    error_message = "zones must have at least one entry."
  }

  validation {
    condition     = alltrue([for id in keys(var.zones) : can(regex("^[a-z]{2,5}[0-9]+(-[a-z]+[0-9]+)?-az[0-9]+$", id))])
    error_message = "zones must be keyed by zone ID (e.g. euw1-az1; aws ec2 describe-availability-zones --query 'AvailabilityZones[].ZoneId'), not by zone name: the same name is a different physical zone in another account."
  }

  validation {
    condition     = alltrue([for z in values(var.zones) : alltrue([for c in concat([z.endpoint_subnet_cidr], z.source_cidrs) : !strcontains(c, ":")])])
    error_message = "zones: endpoint_subnet_cidr and source_cidrs must be IPv4. IPv6 is not routed through the endpoints by this module (see the consumer VPC precondition)."
  }

  validation {
    condition     = alltrue([for z in values(var.zones) : can(cidrhost(z.endpoint_subnet_cidr, 0)) && length(z.source_cidrs) > 0 && alltrue([for c in z.source_cidrs : can(cidrhost(c, 0))])])
    error_message = "Each zone needs a valid endpoint_subnet_cidr and at least one valid source CIDR."
  }

  validation {
    condition     = length(flatten([for z in values(var.zones) : z.source_route_table_ids])) == length(distinct(flatten([for z in values(var.zones) : z.source_route_table_ids])))
    error_message = "A source route table may belong to one zone only: traffic must enter the endpoint of its own zone."
  }
}

variable "inspected_destination_cidrs" {
  description = "Destinations whose traffic from the source subnets is sent through the zone's GWLB endpoint: 0.0.0.0/0 for all egress, plus any in-VPC subnets to inspect (a route more specific than the VPC's local route, e.g. the database subnets). Each one needs a return path: listed in a return_route_tables entry's for_destinations, or in replies_via_source_route_tables."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = length(var.inspected_destination_cidrs) > 0 && alltrue([for c in var.inspected_destination_cidrs : can(cidrhost(c, 0)) && !strcontains(c, ":")])
    error_message = "inspected_destination_cidrs must list at least one valid IPv4 CIDR (IPv6 is refused: this module does not route it through the endpoints)."
  }
}

variable "nat_destination_cidrs" {
  description = "Destinations that, after inspection, leave through the zone's NAT gateway (each zone then needs nat_gateway_id, and the NAT gateway's route table must be a return_route_tables entry). The NAT gateway must come after the endpoint, so that labelwall sees pod addresses."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.nat_destination_cidrs : can(cidrhost(c, 0)) && !strcontains(c, ":")])
    error_message = "nat_destination_cidrs must be valid IPv4 CIDRs."
  }
}

variable "transit_gateway_destination_cidrs" {
  description = "Destinations that, after inspection, leave through the zone's transit gateway attachment (each zone then needs transit_gateway_id)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.transit_gateway_destination_cidrs : can(cidrhost(c, 0)) && !strcontains(c, ":")])
    error_message = "transit_gateway_destination_cidrs must be valid IPv4 CIDRs."
  }
}

variable "return_route_tables" {
  description = "Route tables of the subnets where replies enter (the NAT gateways' subnets, the inspected in-VPC destination subnets, transit gateway attachment subnets), each with the inspected destinations whose replies enter there (for_destinations). Each table gets, for every zone's source CIDR, a route to that zone's endpoint, so both directions of a flow cross the same endpoint. Keep load balancers and anything else out of these subnets: their replies to the source subnets would be inspected one way only."
  type = list(object({
    route_table_id   = string
    for_destinations = list(string)
  }))
  default = []

  validation {
    condition     = alltrue([for t in var.return_route_tables : length(t.for_destinations) > 0 && alltrue([for d in t.for_destinations : contains(var.inspected_destination_cidrs, d)])])
    error_message = "Each return_route_tables entry must list, in for_destinations, one or more of inspected_destination_cidrs (a table for a destination that is not inspected would inspect replies only)."
  }
}

variable "replies_via_source_route_tables" {
  description = "Inspected destinations whose replies arrive in the source subnets themselves and are therefore routed to the endpoint by the source routes: the transit gateway attachment subnets of an inspection VPC, where both directions of every spoke-to-spoke flow enter from the transit gateway (appliance mode keeps them in one zone). Each zone's source CIDRs must then be inspected destinations too."
  type        = list(string)
  default     = []
}
