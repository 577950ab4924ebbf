#!/usr/bin/env bash
# The same access entry as eks-access-entry.tf, with the AWS CLI, plus the ClusterRole and
# its binding. Run once per watched cluster by someone who may administer it:
#
#   appliance/kubernetes/eks-access-entry.sh CLUSTER REGION APPLIANCE_ROLE_ARN
#
# Then, on an appliance, a kubeconfig whose user execs `labelwall eks-token` (what
# appliance/cloud-init writes; kubeconfig.native.example.yaml), or `aws eks get-token`:
#   aws eks update-kubeconfig --region REGION --name CLUSTER --alias CLUSTER \
#     --kubeconfig /etc/labelwall/CLUSTER.kubeconfig
set -euo pipefail

if [ $# -ne 3 ]; then
  echo "usage: $0 CLUSTER REGION APPLIANCE_ROLE_ARN" >&2
  exit 2
fi
cluster=$1
region=$2
role_arn=$3
here=$(cd "$(dirname "$0")" && pwd)

aws eks create-access-entry --region "$region" --cluster-name "$cluster" \
  --principal-arn "$role_arn" --type STANDARD --kubernetes-groups labelwall-readers

kubeconfig=$(mktemp)
trap 'rm -f "$kubeconfig"' EXIT
aws eks update-kubeconfig --region "$region" --name "$cluster" --kubeconfig "$kubeconfig" >/dev/null
kubectl --kubeconfig "$kubeconfig" apply -f "$here/rbac.yaml"
kubectl --kubeconfig "$kubeconfig" auth can-i watch pods --all-namespaces \
  --as=labelwall-check --as-group=labelwall-readers
