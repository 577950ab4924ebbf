"""What terraform test cannot see: lifecycle settings (run by .ci/deploy-checks.sh).

The fleet's size belongs to its target tracking policy once it exists: an apply must not reset
it (issue 16). The bundle pointers belong to labelwall-rollout: an apply must not undo a
rollout or a rollback.
"""
import re


def block(path, header):
    text = open(path).read()
    start = text.index(header)
    depth = 0
    for j in range(text.index("{", start), len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[start:j + 1]
    raise AssertionError(f"{path}: unterminated {header}")


def ignores(body, attribute):
    return re.search(r"lifecycle\s*\{[^}]*ignore_changes\s*=\s*\[\s*" + attribute + r"\s*\]", body)


asg = block("terraform/modules/inspection-vpc/appliance.tf", 'resource "aws_autoscaling_group" "appliance"')
assert ignores(asg, "desired_capacity"), "the fleet's autoscaling group must ignore changes to desired_capacity"
ssm = block("terraform/modules/inspection-vpc/rollout.tf", 'resource "aws_ssm_parameter" "bundle"')
assert ignores(ssm, "value"), "the bundle pointers must ignore changes to their value"
